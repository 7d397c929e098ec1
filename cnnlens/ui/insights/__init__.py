"""The Insights page's sections, one module each: what a layer does across the whole dataset.

- :mod:`~cnnlens.ui.insights.top_images`: the images that excite a channel most;
- :mod:`~cnnlens.ui.insights.class_matrix`: which channels each class excites;
- :mod:`~cnnlens.ui.insights.embedding_map`: every image placed by what the layer sees;
- :mod:`~cnnlens.ui.insights.compare`: two images side by side on one channel;
- :mod:`cnnlens.ui.atlas`: every channel as the image it looks for;
- :mod:`~cnnlens.ui.insights.parquet_export`: the dataset's features as a file.

Each takes a :class:`~cnnlens.ui.insights.focus.Focus` (this run's context, the view
and the chosen layer); dataset-wide results go through :mod:`cnnlens.ui.runner`.
"""
