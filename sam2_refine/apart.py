"""A location's refined outlines kept apart (issue 25): which outcomes take part, their
touching groups settled in the outline processes, and the review of what is written.

This runs after the review's duplicate rule (review.review_location): an outline it
doubted as another's duplicate (OVERLAPS_ANOTHER) takes no part, so a cell prompted twice
is never split against itself. Accepted outlines stand first, doubtful ones second (a
doubtful outline never takes area from an accepted one); outlines earlier runs wrote and
accepted here (`written`, their vertices as written) are never edited: the new ones yield
to them. The split itself is contacts.py's.

In the worker's main process (`keep_apart`): one spatial query finds the groups of objects
whose outlines meet (contacts.touching_groups); an object in none is left as it is. The
groups, with the outlines beside them that a polygon finished anew must yield to, are
bundled into tasks of about CHUNK objects (`GroupChunk`), which cross to the outline
processes as plain arrays, while the model works on the next location. There
(`settle_chunk`) each group is split and kept within its territories, and each changed
outline is judged again (review.judge_object: the same rules as the first judgement, so
size doubts of coarse objects are put down to the resolution); its doubts are added to
those it had. An accepted outline that the review now doubts stands second in another
pass (at most PASSES). An outline that keeps nothing after the split stays as found and
is doubtful (OVERLAPS_ANOTHER); one whose split outline vanishes under a negative Padding
is VANISHED. Back in the main process, only the changed outcomes are replaced.

Coordinates are image pixels (x = column, y = row).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace

import numpy as np
import shapely
from shapely.geometry import Polygon

from . import contacts, review
from .contacts import FieldReader, Member, PixelRegion
from .lowres import LowRes, resize_crop
from .outcome import Outcome, Reason
from .review import Thresholds
from .seam import Window

PASSES = 3  # an accepted outline the review doubts after the split stands second in the next pass
CHUNK = 64  # objects per task for the outline processes (a group is never divided)


@dataclass(frozen=True)
class Options:
    """What settling needs besides the outlines: the user's Smoothing and Padding, the
    frame (width, height) and the thresholds of the review."""

    smoothing: float
    padding: float
    frame_size: tuple[int, int]
    thresholds: Thresholds


@dataclass(frozen=True)
class ObjectLogits:
    """The logits an object's outline came from (on `window`), and the span of its box in
    SAM2's mask pixels (review.judge_object's `span`)."""

    window: Window
    logits: LowRes
    span: float


@dataclass(frozen=True)
class Part:
    """One object as it takes part: its position in the location, SAM2's outline `found`
    and the `polygon` finished from it, its doubts, its original (as the review judges it)
    and its logits (None: not known; the split is geometric)."""

    index: int
    found: Polygon
    polygon: Polygon
    doubts: tuple[Reason, ...]
    original: Polygon | None
    logits: ObjectLogits | None


@dataclass(frozen=True)
class Group:
    """Objects whose outlines meet, the written outlines they meet, and the outlines
    beside them (other objects', written ones) that a polygon finished anew yields to."""

    parts: list[Part]
    written: list[Polygon]
    beside: list[Polygon]


@dataclass(frozen=True)
class Change:
    """What became of a part that changed: its new outline and polygon and all its doubts,
    or (polygon None) it vanished."""

    index: int
    found: Polygon | None
    polygon: Polygon | None
    doubts: tuple[Reason, ...]


# --- in any process: one group ------------------------------------------------------------


# Pixels a region read may reach beyond the window (the split reads one around an overlap,
# which at the image's edge lies beyond it): they take the values of the window's edge.
BEYOND_WINDOW = 1


def field_reader(window: Window, logits: LowRes) -> FieldReader:
    """SAM2's logits at the pixel centres of an image region, resized as the outline's
    were (up to BEYOND_WINDOW pixels beyond the window: its edge's values); None where the
    cells kept do not hold them all."""

    def read(region: PixelRegion) -> np.ndarray | None:
        col0, row0 = region[0] - window.left, region[1] - window.top  # window frame
        col1, row1 = region[2] - window.left, region[3] - window.top
        inner = (max(col0, 0), max(row0, 0), min(col1, window.width), min(row1, window.height))
        before, after = (inner[1] - row0, inner[0] - col0), (row1 - inner[3], col1 - inner[2])
        if max(*before, *after) > BEYOND_WINDOW or not logits.holds(inner, window):
            return None
        values = resize_crop(logits, window.height, window.width, inner)
        if max(*before, *after) > 0:
            values = np.pad(values, ((before[0], after[0]), (before[1], after[1])), mode="edge")
        return values

    return read


def settle(group: Group, options: Options) -> list[Change]:
    """The group's outlines split and kept apart, and judged again (see the module)."""
    parts = group.parts
    finish = contacts.finisher(options.smoothing, options.padding, options.frame_size)
    fields = [None if p.logits is None else field_reader(p.logits.window, p.logits.logits) for p in parts]
    ranks = [0 if not p.doubts else 1 for p in parts]
    left_out = {k for k, p in enumerate(parts) if Reason.OVERLAPS_ANOTHER in p.doubts}
    changes: dict[int, Change] = {}
    emptied: dict[int, Change] = {}  # left with nothing in an earlier pass: as found, doubtful
    for _ in range(PASSES):
        members = [None if k in left_out else Member(p.found, p.polygon, fields[k], ranks[k])
                   for k, p in enumerate(parts)]
        settled = contacts.keep_apart(members, group.written, finish, group.beside)
        changes = {k: change for k, kept in settled.items()
                   if (change := _judged(parts[k], kept, finish, options)) is not None}
        fallen = [k for k, change in changes.items() if ranks[k] == 0 and (change.polygon is None or change.doubts)]
        if not fallen:
            break
        for k in fallen:  # doubtful now: it stands second, or (nothing left of it) takes no part
            ranks[k] = 1
            if Reason.OVERLAPS_ANOTHER in changes[k].doubts:
                left_out.add(k)
                emptied[k] = changes[k]
    changes.update(emptied)
    return [changes[k] for k in sorted(changes)]


def _judged(part: Part, kept: contacts.Settled, finish: contacts.Finish, options: Options) -> Change | None:
    """The change `kept` makes to `part`, judged; None: none."""
    if kept.found is None:  # nothing left of it: it stays as found, doubtful
        return Change(part.index, part.found, part.polygon, _with(part.doubts, [Reason.OVERLAPS_ANOTHER]))
    if kept.found is part.found and kept.polygon is part.polygon:
        return None
    if kept.polygon is None:
        if finish(kept.found) is None:  # shrunk away by a negative Padding
            return Change(part.index, None, None, ())
        return Change(part.index, part.found, part.polygon, _with(part.doubts, [Reason.OVERLAPS_ANOTHER]))
    doubts = part.doubts
    if kept.found is not part.found:  # the review judges the outline SAM2 found, as split
        span = np.inf if part.logits is None else part.logits.span
        judged = review.judge_object(Outcome(kept.polygon, found=kept.found), part.original, options.frame_size,
                                     span, options.thresholds)
        doubts = _with(doubts, judged.doubts)
    return Change(part.index, kept.found, kept.polygon, doubts)


def _with(doubts: tuple[Reason, ...], more: Sequence[Reason]) -> tuple[Reason, ...]:
    return tuple(doubts) + tuple(reason for reason in more if reason not in doubts)


# --- between processes ---------------------------------------------------------------------
# Groups cross as plain fields, their outlines as one array of WKB and their logits as one
# array of floats per chunk (as outlines.TaskChunk does).


class GroupChunk:
    """Groups on their way to an outline process."""

    def __init__(self, groups: list[Group]):
        self.groups = groups

    def __len__(self) -> int:
        return sum(len(group.parts) for group in self.groups)

    def __reduce__(self):
        shapes, fields, arrays = [], [], []
        for group in self.groups:
            for p in group.parts:
                shapes += [p.found, p.polygon, p.original]
                if p.logits is None:
                    place = None
                else:
                    w, low = p.logits.window, p.logits.logits
                    place = ((w.left, w.top, w.width, w.height), low.row0, low.col0, low.grid, low.values.shape,
                             p.logits.span)
                    arrays.append(low.values.ravel())
                fields.append((p.index, tuple(str(reason) for reason in p.doubts), place))
            shapes += group.written + group.beside
        sizes = [(len(g.parts), len(g.written), len(g.beside)) for g in self.groups]
        flat = np.concatenate(arrays).astype(np.float32, copy=False) if arrays else np.empty(0, np.float32)
        return GroupChunk._rebuilt, (sizes, fields, shapely.to_wkb(np.array(shapes, dtype=object)), flat)

    @staticmethod
    def _rebuilt(sizes, fields, shapes, flat) -> "GroupChunk":
        shapes, fields, offset = iter(shapely.from_wkb(shapes)), iter(fields), 0
        groups = []
        for count, written, beside in sizes:
            parts = []
            for _ in range(count):
                index, doubts, place = next(fields)
                found, polygon, original = next(shapes), next(shapes), next(shapes)
                logits = None
                if place is not None:
                    window, row0, col0, grid, shape, span = place
                    values = flat[offset:offset + shape[0] * shape[1]].reshape(shape)
                    offset += shape[0] * shape[1]
                    logits = ObjectLogits(Window(*window), LowRes(values, row0, col0, tuple(grid)), span)
                parts.append(Part(index, found, polygon, tuple(Reason(r) for r in doubts), original, logits))
            groups.append(Group(parts, [next(shapes) for _ in range(written)], [next(shapes) for _ in range(beside)]))
        return GroupChunk(groups)


class Changes:
    """Settled groups' changes on their way back."""

    def __init__(self, changes: list[Change]):
        self.changes = changes

    def __reduce__(self):
        shapes = np.array([shape for c in self.changes for shape in (c.found, c.polygon)], dtype=object)
        fields = [(c.index, tuple(str(reason) for reason in c.doubts)) for c in self.changes]
        return Changes._rebuilt, (fields, shapely.to_wkb(shapes))

    @staticmethod
    def _rebuilt(fields, shapes) -> "Changes":
        shapes = shapely.from_wkb(shapes)
        return Changes([Change(index, shapes[2 * k], shapes[2 * k + 1], tuple(Reason(r) for r in doubts))
                        for k, (index, doubts) in enumerate(fields)])


def settle_chunk(chunk: GroupChunk, options: Options) -> Changes:
    """Each group of a chunk settled (`settle`): one unit of work for a pool."""
    return Changes([change for group in chunk.groups for change in settle(group, options)])


# --- in the worker's main process: one location --------------------------------------------

# How an object's logits are found: by its position in the location (None: not known).
LogitsOf = Callable[[int], "ObjectLogits | None"]
# Hands a task to the outline processes (an executor's `submit`).
Submit = Callable[..., Future]


def keep_apart(
    outcomes: list[Outcome],
    originals: list[Polygon | None],
    written: Sequence[Polygon],
    options: Options,
    logits_of: LogitsOf = lambda index: None,
    submit: Submit | None = None,
) -> list[Outcome]:
    """A location's reviewed outcomes with the outlines of touching objects split and kept
    apart (see the module); `originals` as the review judges them, `written` the outlines
    earlier runs wrote and accepted here. `submit` hands the groups to the outline
    processes (None: settled here)."""
    members = [None if o.polygon is None or Reason.OVERLAPS_ANOTHER in o.doubts
               else Member(o.outline_found, o.polygon) for o in outcomes]
    groups = contacts.touching_groups(members, written)
    if not groups:
        return outcomes
    beside = _beside(members, groups, written, options)
    chunks, chunk = [], []
    for (group, written_here), near in zip(groups, beside):
        parts = [Part(index, outcomes[index].outline_found, outcomes[index].polygon, outcomes[index].doubts,
                      originals[index], logits_of(index)) for index in group]
        chunk.append(Group(parts, [written[w] for w in written_here], near))
        if sum(len(g.parts) for g in chunk) >= CHUNK:
            chunks.append(GroupChunk(chunk))
            chunk = []
    if chunk:
        chunks.append(GroupChunk(chunk))
    if submit is None:
        results = [settle_chunk(c, options) for c in chunks]
    else:
        futures = [submit(settle_chunk, c, options) for c in chunks]
        results = [future.result() for future in futures]
    outcomes = list(outcomes)
    for change in (change for result in results for change in result.changes):
        outcome = outcomes[change.index]
        outcomes[change.index] = Outcome(None, Reason.VANISHED, judged=True) if change.polygon is None else \
            replace(outcome, polygon=change.polygon, found=change.found, doubts=change.doubts)
    return outcomes


def _beside(members: list[Member | None], groups: list[tuple[list[int], list[int]]], written: Sequence[Polygon],
            options: Options) -> list[list[Polygon]]:
    """For each group, the outlines outside it that a polygon of it finished anew could
    reach (within Padding and Smoothing of its members' bounds, and a pixel): the outlines
    and polygons of objects in no group, and written outlines it does not meet."""
    in_group = {index for group, _ in groups for index in group}
    shapes = [shape for index, member in enumerate(members) if member is not None and index not in in_group
              for shape in (member.found, member.polygon)]
    first_written = len(shapes)
    shapes += list(written)
    if not shapes:
        return [[] for _ in groups]
    reach = max(options.padding, 0.0) + options.smoothing + 1.0
    bounds = np.array([shapely.total_bounds([s for i in group for s in (members[i].found, members[i].polygon)])
                       for group, _ in groups])
    boxes = shapely.box(bounds[:, 0] - reach, bounds[:, 1] - reach, bounds[:, 2] + reach, bounds[:, 3] + reach)
    which, hit = shapely.STRtree(shapes).query(boxes)
    near: list[list[Polygon]] = [[] for _ in groups]
    for g, k in zip(which.tolist(), hit.tolist()):
        if k < first_written or k - first_written not in groups[g][1]:
            near[g].append(shapes[k])
    return near
