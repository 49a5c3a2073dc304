"""source layer (see DESIGN.md, 'The layout to grow into')."""
