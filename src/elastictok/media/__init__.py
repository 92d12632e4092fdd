"""Reading and writing images and video, fitting frames to a model, streaming them as blocks."""
