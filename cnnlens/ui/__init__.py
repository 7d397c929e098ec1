"""The dashboard's streamlit layer: caching, session state, the page context, the
sidebar, recipes, the plain words and the map view.

The only part of the package that imports streamlit.
"""
