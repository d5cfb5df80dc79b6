"""kvchat's widgets: they render plain data and emit what the person asked for."""
