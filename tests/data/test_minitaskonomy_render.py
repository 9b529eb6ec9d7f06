"""mini-Taskonomy rendering: labels agree with a hand-built scene whose geometry is known."""

from __future__ import annotations

import math

import pytest
import torch

from mas_lightning.data.minitaskonomy import (
    Scenes,
    culling,
    intersect,
    render_batch,
    render_scenes,
    sample_scenes,
    sample_style,
)
from mas_lightning.data.minitaskonomy.codec import decode
from mas_lightning.data.minitaskonomy.image_labels import texture_edges_and_keypoints
from mas_lightning.data.minitaskonomy.raycast import cast

RES = 32
FOV = math.radians(60.0)
BALL, PILLAR, TABLE = 9, 11, 4


def known_scene(objects: bool = True, window: tuple[float, ...] | None = None, colour: float = 0.6) -> Scenes:
    """One 4 x 3 x 8 m room; the camera at (2, 1.5, 0.5) looks straight along +z (yaw 0, pitch 0).

    With ``objects``: a ball of radius 0.5 at (2, 1.5, 4) (straight ahead), a floor-to-ceiling pillar of
    radius 0.25 at (0.8, *, 4) (image right: the camera's right is world -x) and a table at (3.2, *, 3).
    """
    label = torch.tensor([[TABLE, BALL, PILLAR]]) if objects else torch.zeros(1, 3, dtype=torch.long)
    windows = torch.tensor([[[-1.0, 0, 0, 0, 0], [-1.0, 0, 0, 0, 0]]])
    if window is not None:
        windows[0, 0] = torch.tensor(window)
    plain = [0.0, 0.5, colour, colour, colour, colour, colour, colour]
    return Scenes(
        room=torch.tensor([[4.0, 3.0, 8.0]]),
        camera=torch.tensor([[2.0, 1.5, 0.5]]),
        yaw=torch.zeros(1),
        pitch=torch.zeros(1),
        fov=torch.tensor([FOV]),
        light=torch.tensor([[2.0, 2.8, 3.0]]),
        light_power=torch.ones(1),
        ambient=torch.tensor([0.3]),
        tint=torch.ones(1, 3),
        sky=torch.tensor([[[0.8, 0.9, 1.0], [0.3, 0.5, 0.9]]]),
        windows=windows,
        center=torch.tensor([[[3.2, 0.375, 3.0], [2.0, 1.5, 4.0], [0.8, 1.5, 4.0]]]),
        half=torch.tensor([[[0.4, 0.375, 0.3], [0.5, 0.5, 0.5], [0.25, 1.5, 0.25]]]),
        turn=torch.zeros(1, 3),
        label=label,
        appearance=torch.tensor([plain] * 6)[None],
        slots=(1, 1, 1),
    )


def decoded(scenes: Scenes) -> dict[str, torch.Tensor]:
    stored = render_scenes(scenes, RES, workers=1)
    stored["autoencoder"] = stored["rgb"]
    return {k: v[0] for k, v in decode(stored).items()}


def assert_near(actual: torch.Tensor, expected: float | torch.Tensor, tolerance: float) -> None:
    assert actual.numel() > 0
    error = (actual - expected).abs().max().item()
    assert error <= tolerance, f"off by {error} (tolerance {tolerance})"


def metres(encoded_depth: torch.Tensor) -> torch.Tensor:
    return (torch.exp(encoded_depth * math.log(65536.0)) - 1.0) / 512.0


def test_ball_straight_ahead_has_known_depth_normal_and_curvature():
    sample = decoded(known_scene())
    centre = (slice(RES // 2 - 1, RES // 2 + 1), slice(RES // 2 - 1, RES // 2 + 1))  # 4 pixels on the axis
    assert (sample["segment_semantic"][centre] == BALL).all()
    # Front of the ball: 4 - 0.5 - 0.5 = 3 m from the camera, plus the sag of the sphere half a pixel off-axis.
    assert_near(metres(sample["depth_zbuffer"][0][centre]), 3.0, 0.02)
    normal = sample["normal"][:, centre[0], centre[1]] * 2 - 1
    # Faces the camera (camera z points towards the viewer), tilted by the half-pixel offset from the axis.
    assert normal[2].min() > 0.98
    assert normal[0, 0, 0] < 0 < normal[0, 0, 1] and normal[1, 1, 0] < 0 < normal[1, 0, 0]
    curvature = sample["principal_curvature"][:, centre[0], centre[1]]
    assert_near(curvature, 2.0, 1e-3)  # k1 = k2 = 1 / 0.5 m


def test_curvature_by_surface_kind():
    sample = decoded(known_scene())
    seg, k1, k2 = sample["segment_semantic"], *sample["principal_curvature"]
    ball, pillar = seg == BALL, seg == PILLAR
    flat = sample["mask"][0] & ~ball & ~pillar
    assert ball.sum() > 20 and pillar.sum() > 10 and (seg == TABLE).sum() > 10
    assert_near(k1[ball], 2.0, 1e-3)
    assert_near(k2[ball], 2.0, 1e-3)
    assert_near(k1[pillar], 4.0, 1e-3)  # cylinder: 1 / r and 0
    assert k2[pillar].abs().max() == 0.0
    assert k1[flat].abs().max() == 0.0 and k2[flat].abs().max() == 0.0  # planes: floor, walls, table
    # The pillar stands at world x = 0.8 < 2: right of the image centre, since the camera's right is -x.
    columns = pillar.nonzero()[:, 1].float()
    assert columns.min() > RES / 2


def test_floor_normals_and_all_normals_unit():
    sample = decoded(known_scene())
    floor = sample["segment_semantic"] == 1
    assert floor.sum() > 50
    normal = sample["normal"] * 2 - 1
    # Level camera: the floor's normal is the camera's up axis.
    assert_near(normal[:, floor].T, torch.tensor([0.0, 1.0, 0.0]), 0.01)
    valid = sample["mask"][0]
    assert_near(normal[:, valid].norm(dim=0), 1.0, 1e-5)
    # The geometric normals themselves (before 8-bit storage) are unit length too.
    hits = cast(known_scene(), RES)
    lengths = hits.normal_cam.norm(dim=1)[hits.valid > 0]
    assert_near(lengths, 1.0, 1e-4)


def test_window_pixels_are_invalid_exactly_where_rays_leave_the_room():
    x0, x1, y0, y1 = 2.6, 3.6, 1.0, 2.4
    sample = decoded(known_scene(objects=False, window=(3.0, x0, x1, y0, y1)))
    # Independent projection: pixel rays of a level camera looking along +z, right = world -x.
    axis = (torch.arange(RES) + 0.5) * 2 / RES - 1
    tan = math.tan(FOV / 2)
    dx = -axis[None, :].expand(RES, RES) * tan
    dy = -axis[:, None].expand(RES, RES) * tan
    t = (8.0 - 0.5) / 1.0  # the far wall along z (direction z component 1 before normalisation)
    x, y = 2.0 + t * dx, 1.5 + t * dy
    inside_room = (x > 0) & (x < 4) & (y > 0) & (y < 3)
    expected = inside_room & (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)
    assert expected.sum() > 10
    invalid = ~sample["mask"][0]
    assert torch.equal(invalid, expected)
    assert (sample["segment_semantic"][invalid] == 0).all()
    assert (sample["depth_zbuffer"][0][invalid] == 1.0).all()
    assert (sample["depth_zbuffer"][0][~invalid] < 1.0).all()


def test_reshading_is_albedo_free():
    light, dark = decoded(known_scene(colour=0.9)), decoded(known_scene(colour=0.3))
    assert torch.equal(light["reshading"], dark["reshading"])
    assert light["rgb"].mean() > 2 * dark["rgb"].mean()


def test_occlusion_edges_coincide_with_depth_jumps():
    g = torch.Generator().manual_seed(5)
    batch = render_batch(sample_style(g), 8, RES, g)
    inverse = torch.where(batch["mask"], 1.0 / metres(batch["depth_zbuffer"]).clamp_min(1e-3), 0.0)[:, 0]
    occlusion = batch["edge_occlusion"][:, 0]

    def relative_jump(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a - b).abs() / torch.maximum(a, b).clamp_min(1e-6)

    jump_x = relative_jump(inverse[:, :, 1:], inverse[:, :, :-1])
    jump_y = relative_jump(inverse[:, 1:], inverse[:, :-1])
    # Every big jump (> 30 % in inverse depth) is marked on at least one side of it.
    assert jump_x.gt(0.3).sum() > 20
    assert (torch.maximum(occlusion[:, :, 1:], occlusion[:, :, :-1])[jump_x > 0.3] >= 0.5).all()
    assert (torch.maximum(occlusion[:, 1:], occlusion[:, :-1])[jump_y > 0.3] >= 0.5).all()
    # And every strong edge pixel sits next to a real jump (> 5 %) in depth.
    near_jump = torch.zeros_like(occlusion, dtype=torch.bool)
    near_jump[:, :, 1:] |= jump_x > 0.05
    near_jump[:, :, :-1] |= jump_x > 0.05
    near_jump[:, 1:] |= jump_y > 0.05
    near_jump[:, :-1] |= jump_y > 0.05
    assert occlusion.gt(0.5).sum() > 20
    assert near_jump[occlusion > 0.5].all()


def test_texture_edges_and_keypoints_on_a_white_square():
    image = torch.zeros(1, 3, 16, 16)
    image[..., 4:12, 4:12] = 1.0
    edges, keypoints = texture_edges_and_keypoints(image)
    assert edges[0, 0, 8, 3:5].min() > 0.9 and edges[0, 0, 8, 8] < 1e-6 and edges[0, 0, 0, 0] < 1e-6
    peak = divmod(int(keypoints[0, 0].argmax()), 16)
    assert peak in {(r, c) for r in (3, 4, 11, 12) for c in (3, 4, 11, 12)}  # at a corner of the square
    assert keypoints[0, 0, 8, 4] < 0.1 * keypoints.max()  # a straight edge is not a keypoint


def test_batch_labels_follow_the_convention():
    g = torch.Generator().manual_seed(1)
    batch = render_batch(sample_style(g), 6, RES, g)
    assert batch["segment_semantic"].dtype == torch.int64
    assert batch["segment_semantic"].min() >= 0 and batch["segment_semantic"].max() < 18
    assert (batch["segment_semantic"][~batch["mask"][:, 0]] == 0).all()
    assert (batch["segment_semantic"][batch["mask"][:, 0]] > 0).all()
    assert batch["mask"].dtype == torch.bool and batch["mask"].shape == (6, 1, RES, RES)
    for key in ("rgb", "depth_zbuffer", "normal", "reshading", "edge_occlusion", "edge_texture", "keypoints2d"):
        assert batch[key].dtype == torch.float32 and batch[key].min() >= 0.0 and batch[key].max() <= 1.0, key
    assert torch.equal(batch["autoencoder"], batch["rgb"])
    assert batch["principal_curvature"].shape == (6, 2, RES, RES)
    assert (batch["principal_curvature"][:, 0] >= batch["principal_curvature"][:, 1]).all()  # k1 >= k2


def test_same_seed_same_bytes_and_thread_count_does_not_matter():
    style = sample_style(torch.Generator().manual_seed(3))
    first = render_batch(style, 20, RES, torch.Generator().manual_seed(4))
    second = render_batch(style, 20, RES, torch.Generator().manual_seed(4))
    assert all(torch.equal(first[k], second[k]) for k in first)
    scenes = sample_scenes(style, 20, torch.Generator().manual_seed(4))
    one, two = render_scenes(scenes, RES, workers=1), render_scenes(scenes, RES, workers=2)
    assert all(torch.equal(one[k], two[k]) for k in one)
    other = render_batch(style, 20, RES, torch.Generator().manual_seed(5))
    assert not torch.equal(first["rgb"], other["rgb"])


def test_buildings_differ_in_their_statistics():
    means = []
    for building in range(4):
        g = torch.Generator().manual_seed(100 + building)
        batch = render_batch(sample_style(g), 12, RES, g)
        colour = batch["rgb"].mean(dim=(0, 2, 3))
        depth = metres(batch["depth_zbuffer"][batch["mask"]]).mean()
        means.append(torch.cat([colour, depth[None] / 5]))
    distances = torch.cdist(torch.stack(means), torch.stack(means))
    assert distances[~torch.eye(4, dtype=torch.bool)].min() > 0.03


@pytest.mark.parametrize("resolution", [16, 48, 100, 288, 64.0])
def test_bad_resolution_is_rejected(resolution):
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="multiple of 32 from 32 to 256"):
        render_batch(sample_style(g), 1, resolution, g)


def test_tile_culling_never_changes_a_pixel(monkeypatch):
    g = torch.Generator().manual_seed(7)
    scenes = sample_scenes(sample_style(g), 12, g)
    culled = render_scenes(scenes, 64, workers=1)

    def every_tile(camera, basis, fov, center, radius, filled):
        return filled[..., None].expand(-1, -1, culling.TILES**2).nonzero()

    monkeypatch.setattr(intersect, "visible", every_tile)
    brute_force = render_scenes(scenes, 64, workers=1)
    assert all(torch.equal(culled[k], brute_force[k]) for k in culled)


def test_a_scene_renders_the_same_alone_and_in_a_batch():
    # Chunking (and so the batch a scene lands in) must not change a byte: the cache relies on it.
    g = torch.Generator().manual_seed(8)
    scenes = sample_scenes(sample_style(g), 10, g)
    batch = render_scenes(scenes, RES, workers=1)
    alone = render_scenes(scenes.select(slice(6, 7)), RES, workers=1)
    assert all(torch.equal(alone[k][0], batch[k][6]) for k in batch)
