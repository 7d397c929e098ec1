"""The dashboard's words in plain English, for people who do not program.

Each page opens the topics it shows with :func:`explain`; the text lives here, in one
place, so the pages say the same thing the same way.
"""

from __future__ import annotations

import streamlit as st

__all__ = ["EXPLANATIONS", "explain"]

EXPLANATIONS = {
    "dataset": """
A **dataset** here is a folder of images with a table saying what each one
shows (its **label**). The **seed** makes the random pick repeatable: the same
seed always picks the same images, so a colleague who types the same seed sees
the same thing. The **test** images have no label: the network has to guess.
""",
    "heatmap": """
A **heatmap** paints each number as a colour. Here bright yellow means a high
value, dark purple a low one. In a feature map, bright marks the places where
the network found the pattern that channel looks for.
""",
    "convolution": """
A **convolution layer** slides many small filters (3×3 pixels here) over the
image. Each filter looks for one pattern, such as an edge at an angle, and
writes how strongly it finds it at each place. The result of one filter is a
**channel**; its picture is a **feature map**. Early layers find edges and
strokes; deeper layers combine them into larger shapes.
""",
    "relu": """
**ReLU** keeps positive values and turns negatives into zero: "pattern found"
stays, "opposite of the pattern" becomes nothing. **Batch norm** rescales each
channel so values stay in a useful range. **Pooling** keeps the largest value in
each 2×2 square, halving the map's size, so later layers see a wider area.
""",
    "brightness": """
**Bright** means a strong response; **dark** means none. A conv or batch-norm
layer comes before its ReLU, so its values can be negative: there the darkest
places are where the image looks most unlike the pattern. With *per channel*
normalisation each map uses its full colour range, so faint channels are
visible too; with *per layer* all maps share one scale, so you can compare how
strongly channels respond. A **dead** channel is zero everywhere for this image.
""",
    "top_images": """
**Top images** are the images of the whole dataset that make one channel fire
most strongly: they show what pattern the channel has learned to look for.
Each crop is the part of the image the channel's strongest value depends on
(its **receptive field**); below it, the channel's map, all on one colour scale.
""",
    "class_matrix": """
The **class × channel** table averages each channel over all images of a class.
A bright cell means the channel responds to that class more than to others:
the layer has a detector that helps tell that class apart. Click a cell to see
the images of that class that excite that channel most.
""",
    "embedding": """
The **embedding map** places every image as a point so that images the layer
describes alike lie close together. Colours are the labels: well-separated
colours mean this layer already tells the classes apart. A cross marks an
image the network classifies wrongly. **PCA** keeps the broad layout and is
instant; **t-SNE** and **UMAP** keep close neighbours together but take longer.
Draw a box or lasso around points to see those images.
""",
    "gradcam": """
**Grad-CAM** shows where in the image the chosen layer holds the evidence for a
class: each channel is weighted by how much raising it would raise that class's
score, and the weighted maps are added up. Bright places pushed the network
towards the class; dark ones did not. Deep layers give the clearest pictures.
""",
    "compare": """
**Compare** puts two images side by side on the same channel. The difference
map is the first image's map minus the second's: red where the first image
excites the channel more, blue where the second one does.
""",
}


def explain(*topics: str, title: str = "What am I looking at?") -> None:
    """A collapsible explanation in plain words, for people who do not program."""
    with st.expander(title, icon=":material/help:"):
        st.markdown("\n".join(EXPLANATIONS[topic] for topic in topics))
