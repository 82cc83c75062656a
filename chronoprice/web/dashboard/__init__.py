"""The Dash dashboard: layout, pure figure builders, and callbacks that only wire them."""
