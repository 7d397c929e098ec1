"""The dashboard's streamlit layer: caching, session state and reusable widgets.

The only part of the package that imports streamlit.
"""
