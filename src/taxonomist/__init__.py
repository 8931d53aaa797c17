"""taxonomist: product listings (images, titles) → structured catalog data."""
