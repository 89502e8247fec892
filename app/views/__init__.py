"""The app's views, one module each: every view is a function of what it shows.

``streamlit_app`` routes the open tab to one of them; none reads another view's state.
"""
