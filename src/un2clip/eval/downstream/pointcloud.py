"""Zero-shot point-cloud classification with a frozen CLIP: PointCLIP (Zhang et al., CVPR 2022).

A point cloud (its first 1,024 points, as PointCLIP's loader slices ModelNet40's clouds; centred and
scaled into the unit sphere in float64) is seen from six views — front, right, back, left, top, bottom —
each a perspective projection of the points moved 1.6 units before the camera (PointCLIP's views). As in
PointCLIP's ``points2depth``, a point at (x, y, z) in the view's frame lands on row ceil(r - 0.5) and
column ceil(c - 0.5) with r = (x / z + 1) R / 2 and c = (y / z + 1) R / 2: the row comes from x, the
column from y. A pixel's depth is the one PointCLIP's splatting gives (every point weighted by 1 / depth:
the harmonic mean of the depths landing there), empty pixels 0. By default the raw depth map is what the
image tower sees, as PointCLIP feeds it: repeated on three channels and upsampled bilinearly with
``align_corners=True`` to the model's input size, not normalised. Our alternative (``view_image=
"intensity"``): depth becomes intensity (near bright, far dim, empty black), CLIP-normalised; ``densify``
fills empty pixels with the nearest depth of a neighbourhood (default off, PointCLIP's sparse map). The
logits of the views against "point cloud depth map of a [CLASS]." are summed with view weights
(PointCLIP searches them on the test labels; equal weights here unless given). Metric: accuracy (ties
count against the cloud: :mod:`un2clip.eval.core.metrics`).

Layouts: ModelNet40's HDF5 release as PointCLIP reads it (``DIR/shape_names.txt``, ``DIR/<split>_files.txt``
naming ``ply_data_<split><k>.h5`` files with ``data`` (N, 2048, 3) and ``label`` (N, 1); needs h5py: ``pip
install 'un2clip[pointcloud]'``; those clouds already lie in the unit sphere and are not rescaled unless
asked), or class folders ``DIR/<class>/[<split>/]<file>`` with ``.off`` meshes (points sampled on the faces,
area-weighted), ``.txt`` (x y z [nx ny nz], comma or space separated) or ``.npy`` (N, >=3) files. An empty
or unreadable point file is skipped, counted and named on the console.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from un2clip.data import transforms as T
from un2clip.eval.core.embed import inference_context
from un2clip.eval.core.metrics import zeroshot_metrics
from un2clip.eval.downstream.common import report_skipped
from un2clip.eval.encoder.zeroshot import zeroshot_classifier

if TYPE_CHECKING:
    from un2clip.models.clip import ClipModel

POINT_EXTENSIONS = (".off", ".txt", ".npy")
TEMPLATE = "point cloud depth map of a {}."
CAMERA_DISTANCE = 1.6  # PointCLIP's translation of the points along the viewing axis
RESOLUTION = 128  # PointCLIP's depth-map side before resizing to the model input
# (x, y, z) Euler angles of the six views: four around the object, then above and below
VIEWS = tuple((a, 0.0, math.pi / 2) for a in (0.0, math.pi / 2, math.pi, 3 * math.pi / 2)) + (
    (0.0, -math.pi / 2, math.pi / 2), (0.0, math.pi / 2, math.pi / 2))
VIEW_IMAGES = ("raw", "intensity")  # PointCLIP's raw depth map, or our intensity image
SUBSETS = ("first", "random")  # which points of a longer cloud: PointCLIP's first N, or a seeded draw
LAYOUT = ("expected DIR/<class>/[<split>/]<file> point files (.off, .txt, .npy), one folder per class "
          "(ModelNet40's layout)")


# -- pure geometry -------------------------------------------------------------------------------------


def euler_rotation(ax: float, ay: float, az: float) -> torch.Tensor:
    """(3, 3) rotation Rx(ax) @ Ry(ay) @ Rz(az)."""
    cx, sx, cy, sy, cz, sz = math.cos(ax), math.sin(ax), math.cos(ay), math.sin(ay), math.cos(az), math.sin(az)
    rx = torch.tensor([[1, 0, 0], [0, cx, -sx], [0, sx, cx]], dtype=torch.float64)
    ry = torch.tensor([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]], dtype=torch.float64)
    rz = torch.tensor([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]], dtype=torch.float64)
    return (rx @ ry @ rz).float()


def normalize_points(points: torch.Tensor) -> torch.Tensor:
    """(N, 3) points centred on their mean and scaled so the farthest lies on the unit sphere, computed in
    float64 (a float32 norm overflows past about 1.8e19 and every point collapses onto the centre)."""
    if points.ndim != 2 or points.shape[0] == 0:
        raise ValueError(f"expected a non-empty (N, 3) point cloud, got {tuple(points.shape)}")
    p = points.double()
    centred = p - p.mean(dim=0, keepdim=True)
    scale = centred.abs().max().clamp(min=1e-300)  # scaled first, so the squares cannot overflow either
    radius = (centred / scale).norm(dim=1).max() * scale
    if not torch.isfinite(radius) or radius <= 0:
        return torch.zeros_like(points, dtype=torch.float32)
    return (centred / radius).float()


def project_views(points: torch.Tensor, *, resolution: int = RESOLUTION,
                  views: Sequence[tuple[float, float, float]] = VIEWS) -> torch.Tensor:
    """(N, 3) unit-sphere points -> (V, R, R) sparse depth maps (0 where no point lands)."""
    maps = []
    for angles in views:
        p = points.float() @ euler_rotation(*angles).T  # (N, 3) in the view's frame
        z = p[:, 2] + CAMERA_DISTANCE  # in [0.6, 2.6] for unit-sphere points
        row = ((p[:, 0] / z + 1) * resolution / 2 - 0.5).ceil().long()  # PointCLIP: the row from x
        col = ((p[:, 1] / z + 1) * resolution / 2 - 0.5).ceil().long()  # and the column from y
        inside = (row >= 0) & (row < resolution) & (col >= 0) & (col < resolution) & (z >= 0)
        flat = (row * resolution + col)[inside]
        count = torch.zeros(resolution * resolution).index_add_(0, flat, torch.ones_like(z[inside]))
        inverse = torch.zeros(resolution * resolution).index_add_(0, flat, 1.0 / z[inside])
        depth = torch.where(count > 0, count / inverse.clamp(min=1e-12), torch.zeros_like(count))
        maps.append(depth.reshape(resolution, resolution))
    return torch.stack(maps)


def densify(depth: torch.Tensor, size: int = 3) -> torch.Tensor:
    """(..., H, W) depth maps with each empty pixel given the nearest depth of its size x size neighbourhood
    (``size`` odd; 0 or 1: unchanged)."""
    if size <= 1:
        return depth
    if size % 2 == 0 or size > 2 * max(depth.shape[-2:]) + 1:
        raise ValueError(f"densify size must be odd and at most {2 * max(depth.shape[-2:]) + 1}, got {size}")
    shape = depth.shape
    d = depth.reshape(-1, 1, *shape[-2:])
    nearest = -F.max_pool2d(torch.where(d > 0, -d, torch.full_like(d, -math.inf)), size, stride=1,
                            padding=size // 2)
    filled = torch.where((d > 0) | torch.isinf(nearest), d, nearest)
    return torch.where(torch.isinf(filled), torch.zeros_like(filled), filled).reshape(shape)


def depth_to_intensity(depth: torch.Tensor) -> torch.Tensor:
    """Depth maps -> [0, 1] intensity: near points bright (1 at 0.6), far ones dim (0.2 at 2.6), empty 0."""
    near, far = CAMERA_DISTANCE - 1, CAMERA_DISTANCE + 1
    value = 1.0 - 0.8 * (depth - near) / (far - near)
    return torch.where(depth > 0, value.clamp(0, 1), torch.zeros_like(depth))


def view_logits(view_embeds: torch.Tensor, classifier: torch.Tensor, weights: Sequence[float] | None = None,
                logit_scale: float = 100.0) -> torch.Tensor:
    """(B, V, D) unit view embeddings, (D, C) class embeddings -> (B, C) = sum_v w_v * scale * cosine_v."""
    w = torch.ones(view_embeds.shape[1]) if weights is None else torch.as_tensor(weights, dtype=torch.float)
    check_view_weights(w.tolist(), view_embeds.shape[1])
    per_view = logit_scale * view_embeds @ classifier  # (B, V, C)
    return (per_view * w.reshape(1, -1, 1).to(per_view)).sum(dim=1)


def check_view_weights(weights: Sequence[float], n_views: int = len(VIEWS)) -> None:
    """A clear error for view weights that cannot weigh the views: wrong count, not finite, negative, all 0."""
    w = [float(x) for x in weights]
    if len(w) != n_views:
        raise ValueError(f"{len(w)} view weights for {n_views} views")
    if not all(math.isfinite(x) and x >= 0 for x in w):
        raise ValueError(f"view weights must be finite and >= 0, got {w}")
    if not any(w):
        raise ValueError("view weights are all 0: every cloud would score 0 for every class (chance); give at "
                         "least one positive weight")


# -- data ----------------------------------------------------------------------------------------------


def _read_off(path: Path, n_points: int, rng: np.random.Generator) -> np.ndarray:
    tokens = path.read_text(encoding="utf-8", errors="replace").split()
    if not tokens or not tokens[0].upper().startswith("OFF"):
        raise ValueError("no OFF header")
    head = tokens[0][3:]  # ModelNet writes "OFF490 518 0" on one line in some files
    rest = ([head] if head else []) + tokens[1:]
    nv, nf = int(rest[0]), int(rest[1])
    values = rest[3:]
    verts = np.asarray(values[:3 * nv], dtype=np.float64).reshape(nv, 3)
    faces, pos = [], 3 * nv
    for _ in range(nf):
        k = int(values[pos])
        idx = [int(i) for i in values[pos + 1:pos + 1 + k]]
        faces += [(idx[0], idx[j], idx[j + 1]) for j in range(1, k - 1)]  # fan triangulation
        pos += 1 + k
    if not faces:
        return verts
    tri = verts[np.asarray(faces)]  # (F, 3, 3)
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    if area.sum() <= 0:
        return verts
    pick = rng.choice(len(tri), size=n_points, p=area / area.sum())
    r1, r2 = np.sqrt(rng.random(n_points))[:, None], rng.random(n_points)[:, None]
    t = tri[pick]
    return (1 - r1) * t[:, 0] + r1 * (1 - r2) * t[:, 1] + r1 * r2 * t[:, 2]  # uniform on each triangle


def read_points(path: str | Path, n_points: int = 1024, seed: int = 0, subset: str = "first") -> torch.Tensor | None:
    """(n, 3) float64 points of a .off/.txt/.npy file, at most ``n_points``: the first ones (``subset="first"``,
    PointCLIP's ``impath[:1024]``) or a seeded draw kept in file order (``"random"``); None when the file is
    empty or cannot be read. A mesh (.off) is sampled, ``n_points`` points on its faces."""
    if n_points < 1:
        raise ValueError(f"n_points must be >= 1, got {n_points}")
    if subset not in SUBSETS:
        raise ValueError(f"unknown point subset {subset!r}; known: {', '.join(SUBSETS)}")
    path = Path(path)
    rng = np.random.default_rng(seed)
    try:
        ext = path.suffix.lower()
        if ext == ".npy":
            pts = np.load(path, allow_pickle=False)
        elif ext == ".txt":
            text = path.read_text(encoding="utf-8", errors="replace")
            if not text.strip():
                return None
            pts = np.loadtxt(io.StringIO(text), delimiter="," if "," in text[:200] else None, ndmin=2)
        elif ext == ".off":
            pts = _read_off(path, n_points, rng)
        else:
            return None
        pts = np.asarray(pts, dtype=np.float64)
    except (OSError, ValueError, IndexError):
        return None
    if pts.ndim != 2 or pts.shape[0] == 0 or pts.shape[1] < 3 or not np.isfinite(pts[:, :3]).all():
        return None
    pts = pts[:, :3]
    if len(pts) > n_points:
        pts = pts[:n_points] if subset == "first" else pts[np.sort(rng.choice(len(pts), n_points, replace=False))]
    return torch.from_numpy(np.ascontiguousarray(pts))


@dataclass
class PointCloudSet:
    """Point files and their class indices; for HDF5 files, the cloud's row in its file."""

    paths: list[Path]
    labels: list[int]
    classnames: list[str]
    rows: list[int] | None = None  # HDF5 layout: row of each cloud in its file's ``data``


H5_INSTALL = "pip install 'un2clip[pointcloud]' (or: pip install h5py)"


def _require_h5py():
    try:
        import h5py
    except ImportError:
        raise ImportError(f"ModelNet40's HDF5 files need h5py, which is not installed: {H5_INSTALL}") from None
    return h5py


def _h5_file(listed: str, root: Path) -> Path:
    """A file named in ``<split>_files.txt``: as written (relative to DIR or absolute), else its name in DIR."""
    path = Path(listed)
    for candidate in (path if path.is_absolute() else root / path, root / path.name):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{root}: the file list names {listed}, found neither there nor as {root / path.name}")


def read_h5_set(root: Path, split: str) -> PointCloudSet:
    """ModelNet40's HDF5 release (PointCLIP's reader): class names from ``shape_names.txt``, the clouds of the
    files ``<split>_files.txt`` lists, in order."""
    h5py = _require_h5py()
    names = [n.strip() for n in (root / "shape_names.txt").read_text(encoding="utf-8").splitlines() if n.strip()]
    listed = [n.strip() for n in (root / f"{split}_files.txt").read_text(encoding="utf-8").splitlines() if n.strip()]
    if not listed:
        raise ValueError(f"{root / f'{split}_files.txt'} names no HDF5 file")
    paths, labels, rows = [], [], []
    for name in listed:
        path = _h5_file(name, root)
        with h5py.File(path, "r") as f:
            if "data" not in f or "label" not in f:
                raise ValueError(f"{path} lacks 'data' or 'label' (ModelNet40's HDF5 layout)")
            label = np.asarray(f["label"]).reshape(-1).astype(np.int64)
            if len(label) != f["data"].shape[0]:
                raise ValueError(f"{path}: {f['data'].shape[0]} clouds but {len(label)} labels")
        bad = label[(label < 0) | (label >= len(names))]
        if bad.size:
            raise ValueError(f"{path}: label {int(bad[0])} outside the {len(names)} classes of shape_names.txt")
        paths += [path] * len(label)
        labels += label.tolist()
        rows += list(range(len(label)))
    if len(names) < 2:
        raise ValueError(f"{root / 'shape_names.txt'} names {len(names)} classes: zero-shot classification needs two "
                         "or more")
    return PointCloudSet(paths, labels, [n.replace("_", " ") for n in names], rows)


def read_h5_cloud(path: Path, row: int, n_points: int = 1024, cache: dict | None = None) -> torch.Tensor | None:
    """(n, 3) float64: the first ``n_points`` points of cloud ``row`` of an HDF5 file (PointCLIP's
    ``impath[:1024]``); None when they are not finite. ``cache`` keeps each file's array between calls."""
    cache = {} if cache is None else cache
    if path not in cache:
        cache.clear()  # one file at a time: the clouds come file by file
        with _require_h5py().File(path, "r") as f:
            cache[path] = np.asarray(f["data"])
    pts = np.asarray(cache[path][row][:n_points, :3], dtype=np.float64)
    return torch.from_numpy(pts) if pts.size and np.isfinite(pts).all() else None


def read_pointcloud_set(data: str | Path, *, split: str = "test") -> PointCloudSet:
    """ModelNet40's HDF5 release when ``DIR/shape_names.txt`` and ``DIR/<split>_files.txt`` exist; else class
    folders of point files (inside a class folder, its ``split`` subfolder when it has one)."""
    root = Path(data)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder; {LAYOUT}")
    if (root / "shape_names.txt").is_file() and (root / f"{split}_files.txt").is_file():
        return read_h5_set(root, split)
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    paths, labels, names = [], [], []
    for folder in folders:
        where = folder / split if (folder / split).is_dir() else folder
        found = sorted(p for p in where.rglob("*") if p.suffix.lower() in POINT_EXTENSIONS and p.is_file())
        if not found:
            continue
        names.append(folder.name.replace("_", " "))
        paths += found
        labels += [len(names) - 1] * len(found)
    if len(names) < 2:
        raise ValueError(f"{root} has {len(names)} class folders with point files: zero-shot classification "
                         f"needs two or more; {LAYOUT}")
    return PointCloudSet(paths, labels, names)


# -- model ---------------------------------------------------------------------------------------------


def view_images(depth: torch.Tensor, size: int, *, view_image: str = "raw", mean: Sequence[float] = (0.5,) * 3,
                std: Sequence[float] = (0.5,) * 3) -> torch.Tensor:
    """(V, R, R) depth maps -> (V, 3, size, size) image-tower inputs, upsampled bilinearly with
    ``align_corners=True`` (PointCLIP's ``mv_proj``). ``raw``: the depth values themselves, PointCLIP's input;
    ``intensity``: near bright, far dim (:func:`depth_to_intensity`), normalised with ``mean``/``std``."""
    if view_image not in VIEW_IMAGES:
        raise ValueError(f"unknown view image {view_image!r}; known: {', '.join(VIEW_IMAGES)}")
    x = depth if view_image == "raw" else depth_to_intensity(depth)
    x = F.interpolate(x[:, None].expand(-1, 3, -1, -1), size=(size, size), mode="bilinear", align_corners=True)
    return x if view_image == "raw" else T.normalize(x.clamp(0, 1), mean, std)


def view_inputs(points: torch.Tensor, model: ClipModel, *, densify_size: int = 0, view_image: str = "raw",
                normalize: bool = True) -> torch.Tensor:
    """(V, 3, S, S) model inputs of a point cloud's six depth views."""
    pts = normalize_points(points) if normalize else points.float()
    depth = densify(project_views(pts), densify_size)  # (V, R, R)
    proc = model.processing
    return view_images(depth, proc.size, view_image=view_image, mean=proc.mean, std=proc.std)


def evaluate(model: ClipModel, data: str | Path, *, split: str = "test", n_points: int = 1024,
             point_subset: str = "first", densify_size: int = 0, view_image: str = "raw", normalize: bool | None = None,
             view_weights: Sequence[float] | None = None, template: str = TEMPLATE, batch_size: int = 16,
             precision: str = "auto", progress: bool = True) -> dict[str, float]:
    """acc1 (and acc5 with 5+ classes), mean per-class recall, counts of clouds, classes and skipped files.
    ``normalize`` None: clouds read from files are centred and scaled into the unit sphere, ModelNet40's HDF5
    clouds (already in it) are taken as they are, as PointCLIP takes them."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if n_points < 1:
        raise ValueError(f"n_points must be >= 1, got {n_points}")
    if view_weights is not None:
        check_view_weights(view_weights)
    if view_image not in VIEW_IMAGES or point_subset not in SUBSETS:
        raise ValueError(f"view_image must be one of {VIEW_IMAGES} and point_subset one of {SUBSETS}")
    densify(torch.zeros(1, RESOLUTION, RESOLUTION), densify_size)  # a bad size fails before any cloud is read
    model.eval()
    ds = read_pointcloud_set(data, split=split)
    classifier = zeroshot_classifier(model, ds.classnames, [template], precision=precision, progress=False)
    logits, targets, skipped = [], [], []
    batch: list[torch.Tensor] = []
    batch_labels: list[int] = []

    def flush() -> None:
        x = torch.cat(batch)  # (B * V, 3, S, S)
        emb = F.normalize(model.encode_image(x.to(model.device)).float(), dim=-1).cpu()
        logits.append(view_logits(emb.reshape(len(batch), len(VIEWS), -1), classifier, view_weights))
        targets.extend(batch_labels)
        batch.clear()
        batch_labels.clear()

    with inference_context(model.device, precision):
        rows = ds.rows or [None] * len(ds.paths)
        scale = normalize if normalize is not None else ds.rows is None
        cache: dict = {}
        for path, label, row in tqdm(list(zip(ds.paths, ds.labels, rows)), desc="point clouds",
                                     disable=not progress, leave=False):
            if row is None:
                points = read_points(path, n_points, subset=point_subset)
            else:
                points = read_h5_cloud(path, row, n_points, cache)
            if points is None:
                skipped.append(str(path) if row is None else f"{path} cloud {row}")
                continue
            batch.append(view_inputs(points, model, densify_size=densify_size, view_image=view_image,
                                     normalize=scale))
            batch_labels.append(label)
            if len(batch) == batch_size:
                flush()
        if batch:
            flush()
    if not logits:
        raise ValueError(f"none of the {len(ds.paths)} point files of {data} could be read")
    report_skipped("point files (empty or unreadable)", skipped)
    metrics = zeroshot_metrics(torch.cat(logits), torch.tensor(targets))
    metrics.update(n_clouds=len(targets), n_classes=len(ds.classnames), n_skipped_files=len(skipped))
    return metrics
