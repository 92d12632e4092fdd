"""Transformer building blocks: fixed sin-cos position features of a patch grid."""

from __future__ import annotations

import torch

from elastictok.layers.transformer import sincos_grid_embedding


def test_sincos_grid_features_tell_every_cell_apart_by_its_coordinates():
    grid, dim = (2, 8, 8), 96
    features = sincos_grid_embedding(grid, dim)
    assert features.shape == (2 * 8 * 8, dim) and features.abs().max() <= 1
    assert torch.cdist(features, features).add(torch.eye(len(features)) * 1e3).min() > 0.1  # all cells distinct
    cells = features.view(*grid, dim)
    t_part, hw_part = slice(0, dim // 3 // 2 * 2), slice(dim // 3 // 2 * 2, dim)
    torch.testing.assert_close(cells[0, ..., hw_part], cells[1, ..., hw_part])  # same (h, w), same (h, w) features
    assert not torch.allclose(cells[0, ..., t_part], cells[1, ..., t_part])
    near, far = (cells[0, 3, 3] - cells[0, 3, 4]).norm(), (cells[0, 3, 3] - cells[0, 3, 7]).norm()
    assert near < far  # neighbours are closer than distant cells
