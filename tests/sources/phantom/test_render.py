"""Soft solids: distances, occupancy, world-fixed shading."""
from __future__ import annotations

import numpy as np

from anatplane_dist.sources.phantom.render import (
    Bullet,
    Canvas,
    Capsule,
    Ellipsoid,
    bias_field,
    occupancy,
    rician,
    rotation,
    to_12bit,
)


def test_sphere_sdf_is_exact_and_grow_shifts_it():
    sph = Ellipsoid(np.array([1.0, 2.0, 3.0]), np.eye(3), np.array([10.0, 10.0, 10.0]))
    pts = np.array([[1.0, 2.0, 3.0 + 4.0], [1.0 + 15.0, 2.0, 3.0], [1.0, 2.0 - 10.0, 3.0]])
    np.testing.assert_allclose(sph.sdf(pts), [-6.0, 5.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(sph.sdf(pts, grow=2.0), [-8.0, 3.0, -2.0], atol=1e-9)


def test_ellipsoid_sdf_sign_and_rotation():
    axes = rotation(np.array([0.0, 0.0, 1.0]), np.pi / 2)        # semi-axis 0 now along +y
    ell = Ellipsoid(np.zeros(3), axes, np.array([30.0, 10.0, 5.0]))
    assert ell.sdf(np.array([0.0, 29.0, 0.0])) < 0 < ell.sdf(np.array([29.0, 0.0, 0.0]))
    np.testing.assert_allclose(ell.sdf(np.array([0.0, 32.0, 0.0])), 2.0, atol=1e-6)


def test_bullet_is_cylindrical_behind_its_centre():
    b = Bullet(np.zeros(3), np.eye(3), np.array([40.0, 20.0, 20.0]))
    far_back = np.array([[-100.0, 19.0, 0.0], [-100.0, 21.0, 0.0]])
    assert b.sdf(far_back)[0] < 0 < b.sdf(far_back)[1]
    np.testing.assert_allclose(b.sdf(np.array([41.0, 0.0, 0.0])), 1.0, atol=1e-6)   # the cap


def test_capsule_distance():
    c = Capsule(np.zeros(3), np.array([0.0, 0.0, 10.0]), 2.0)
    np.testing.assert_allclose(c.sdf(np.array([[5.0, 0.0, 5.0], [0.0, 0.0, -4.0]])), [3.0, 2.0])


def test_occupancy_and_canvas_keep_labels_consistent_with_pixels():
    occ = occupancy(np.array([-5.0, 0.0, 5.0]), 1.0)
    assert occ[0] > 0.99 and abs(occ[1] - 0.5) < 1e-12 and occ[2] < 0.01
    cv = Canvas((3,))
    cv.paint(occ, 1.0, label=3)
    assert cv.labels.tolist() == [3, 0, 0]
    np.testing.assert_allclose(cv.image, occ)


def test_bias_field_depends_on_world_position_only():
    pts = np.random.default_rng(0).normal(size=(50, 3)) * 50
    coils = np.array([[0.0, -100.0, 0.0]])
    b1 = bias_field(pts, coils, np.array([80.0]), np.array([0.5]))
    b2 = bias_field(pts[::-1], coils, np.array([80.0]), np.array([0.5]))[::-1]
    np.testing.assert_array_equal(b1, b2)
    assert b1.min() > 0 and b1.std() > 0.01


def test_rician_and_12bit_range():
    rng = np.random.default_rng(1)
    img = rician(np.zeros((64, 64)), 0.1, rng)
    assert img.min() >= 0 and 0.08 < img.mean() < 0.18          # Rayleigh mean sigma*sqrt(pi/2)
    px = to_12bit(np.array([-1.0, 0.5, 10.0]), 1000.0)
    assert px.dtype == np.uint16 and px.tolist() == [0, 500, 4095]
