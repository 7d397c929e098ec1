"""The smallest Streamlit page with the Home title: the start-up floor of any Streamlit app.

bench_dashboard.py starts it beside cnnlens to show what Streamlit itself costs here.
"""

import streamlit as st

st.title("See what a neural network sees")
