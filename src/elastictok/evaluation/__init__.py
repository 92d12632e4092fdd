"""The paper's measurement (Fig. 4) and the pictures: token plots and side-by-side reconstructions."""
