"""Scene rendering with matplotlib: road graph, agents as oriented boxes, trails, signals, rollouts.

``plot_scenario(ax, scenario)`` draws one (unbatched, numpy or jax) ``Scenario``
on a matplotlib axis; the curation and evaluation stages reuse it to overlay
sampled rollouts (``rollout_xy``). ``render_png`` makes a whole figure file
with the Agg backend (no display needed).
"""

from __future__ import annotations

import numpy as np
from matplotlib.collections import LineCollection, PolyCollection
from matplotlib.figure import Figure  # no pyplot: Figure.savefig renders with Agg, no display
from matplotlib.lines import Line2D

from dpa_omf import datatypes as dt
from dpa_omf.geometry import shapes as geo

AGENT_COLORS = {
    dt.AGENT_TYPE_UNSET: "#7f7f7f", dt.AGENT_TYPE_VEHICLE: "#1f77b4", dt.AGENT_TYPE_PEDESTRIAN: "#ff7f0e",
    dt.AGENT_TYPE_CYCLIST: "#2ca02c", dt.AGENT_TYPE_OTHER: "#9467bd",
}
SDC_COLOR = "#d62728"
# Road-graph style per type code: (colour, line width, z-order).
_LANE = ("#c8c8c8", 0.6, 1)
_WHITE_LINE = ("#8c8c8c", 0.8, 2)
_YELLOW_LINE = ("#e0b000", 0.9, 2)
_EDGE = ("#202020", 1.4, 3)
_ROAD_STYLES = {
    **dict.fromkeys((0, 1, 2, 3), _LANE),
    **dict.fromkeys((5, 6, 7, 8), _WHITE_LINE),
    **dict.fromkeys((9, 10, 11, 12, 13), _YELLOW_LINE),
    **dict.fromkeys((14, 15, 16), _EDGE),
    dt.RG_CROSSWALK: ("#5a5a5a", 0.8, 2), dt.RG_SPEED_BUMP: ("#b5651d", 0.8, 2), dt.RG_DRIVEWAY: ("#a0a0a0", 0.5, 1),
}
_LIGHT_COLORS = {
    dt.TL_UNKNOWN: "#7f7f7f", dt.TL_ARROW_STOP: "#d62728", dt.TL_STOP: "#d62728", dt.TL_FLASHING_STOP: "#d62728",
    dt.TL_ARROW_CAUTION: "#ffbf00", dt.TL_CAUTION: "#ffbf00", dt.TL_FLASHING_CAUTION: "#ffbf00",
    dt.TL_ARROW_GO: "#2ca02c", dt.TL_GO: "#2ca02c",
}


def _np(x) -> np.ndarray:
    return np.asarray(x)


def road_polylines(rg: dt.RoadGraph) -> tuple[list[np.ndarray], np.ndarray]:
    """Splits the road graph into polylines (runs of valid samples with one id).

    Returns:
      ``(polylines, type)``: a list of ``[n_i, 2]`` xy arrays (n_i >= 1; single
      samples are stop signs) and their ``[num_polylines]`` type codes.
    """
    xyz, ids, valid, rtype = _np(rg.xyz), _np(rg.id), _np(rg.valid).astype(bool), _np(rg.type)
    link = valid[:-1] & valid[1:] & (ids[:-1] == ids[1:])
    starts = np.flatnonzero(~np.concatenate([[False], link]))
    pieces = np.split(xyz[:, :2], starts[1:])
    keep = valid[starts]
    return [p for p, k in zip(pieces, keep, strict=False) if k], rtype[starts][keep]


def _trail_segments(xy: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Segments between consecutive valid steps: ``([S, 2, 2], agent index [S])``."""
    link = valid[:, :-1] & valid[:, 1:]
    a, t = np.nonzero(link)
    return np.stack([xy[a, t], xy[a, t + 1]], axis=1), a


def scene_bounds(s: dt.Scenario, time_index: int = dt.CURRENT_INDEX, margin: float = 15.0) -> tuple:
    """``(xmin, xmax, ymin, ymax)`` around the agents valid at ``time_index`` (all valid steps if none)."""
    a = s.agents
    valid = _np(a.valid).astype(bool)
    now = valid[:, time_index]
    sel = now[:, None] & valid if now.any() else valid
    x, y = _np(a.x)[sel], _np(a.y)[sel]
    if x.size == 0:  # no agent at all: the road graph
        v = _np(s.roadgraph.valid).astype(bool)
        x, y = _np(s.roadgraph.xyz)[v, 0], _np(s.roadgraph.xyz)[v, 1]
    if x.size == 0:
        return (-margin, margin, -margin, margin)
    return (x.min() - margin, x.max() + margin, y.min() - margin, y.max() + margin)


def plot_scenario(ax, scenario: dt.Scenario, rollout_xy=None, *, rollout_valid=None,
                  time_index: int = dt.CURRENT_INDEX, show_history: bool = True, show_future: bool = True,
                  zoom: bool = True, margin: float = 15.0, title: str | None = None, legend: bool = True):
    """Draws one scene on a matplotlib axis.

    Args:
      ax: a matplotlib ``Axes``.
      scenario: a single (unbatched) ``Scenario``: agents ``[A, 91]``, road graph ``[P]``.
      rollout_xy: optional simulated positions, ``[A, T_r, 2]`` or ``[R, A, T_r, 2]``
        (R rollouts), metres, drawn as thin lines in each agent's colour.
      rollout_valid: optional bool mask ``[A, T_r]`` or ``[R, A, T_r]`` for ``rollout_xy``.
      time_index: the step at which boxes and signal states are drawn.
      show_history / show_future: draw the logged trails before / after ``time_index``.
      zoom: limit the view to the agents valid at ``time_index`` plus ``margin`` metres.
      title: axis title (default: the scenario id).
      legend: add a small legend of agent types.
    Returns:
      ``ax``.
    """
    a = scenario.agents
    _draw_road(ax, scenario.roadgraph)
    colors = _agent_colors(a)
    _draw_trails(ax, a, colors, time_index, show_history, show_future)
    if rollout_xy is not None:
        _plot_rollouts(ax, _np(rollout_xy), rollout_valid, colors)
    lights_shown = _draw_lights(ax, scenario.traffic_lights, time_index)
    _draw_boxes(ax, a, colors, time_index)
    _set_view(ax, scenario, time_index, zoom, margin)
    ax.set_title(title if title is not None else f"scenario {dt.scenario_id_str(scenario.scenario_id)}", fontsize=9)
    ax.tick_params(labelsize=7)
    if legend:
        _draw_legend(ax, a, lights_shown)
    return ax


def _draw_road(ax, rg: dt.RoadGraph) -> None:
    """Road graph, one collection of whole polylines per style (lanes under lines under edges), and stop signs."""
    lines, ltype = road_polylines(rg)
    for style in set(_ROAD_STYLES.values()):
        codes = [c for c, v in _ROAD_STYLES.items() if v == style]
        chosen = [p for p, t in zip(lines, ltype, strict=False) if t in codes and len(p) > 1]
        if chosen:
            ax.add_collection(LineCollection(chosen, colors=style[0], linewidths=style[1], zorder=style[2],
                                             capstyle="round", joinstyle="round"))
    stops = _np(rg.valid).astype(bool) & (_np(rg.type) == dt.RG_STOP_SIGN)
    if stops.any():
        p = _np(rg.xyz)[stops]
        ax.scatter(p[:, 0], p[:, 1], marker="8", s=25, c="#800000", zorder=4, edgecolors="white", linewidths=0.5)


def _agent_colors(a: dt.Agents) -> np.ndarray:
    """``[A]`` colour of each agent: by type, the SDC in red."""
    colors = np.array([AGENT_COLORS.get(int(t), AGENT_COLORS[0]) for t in _np(a.type)], dtype=object)
    colors[_np(a.is_sdc).astype(bool)] = SDC_COLOR
    return colors


def _draw_trails(ax, a: dt.Agents, colors: np.ndarray, time_index: int, show_history: bool,
                 show_future: bool) -> None:
    """Logged trails: history solid, future dashed and lighter."""
    valid = _np(a.valid).astype(bool)
    xy = np.stack([_np(a.x), _np(a.y)], axis=-1)
    steps = np.arange(valid.shape[1])
    for show, mask, style, alpha in ((show_history, steps <= time_index, "solid", 0.9),
                                     (show_future, steps >= time_index, (0, (2, 2)), 0.5)):
        if show:
            tsegs, who = _trail_segments(xy, valid & mask[None])
            if len(tsegs):
                ax.add_collection(LineCollection(tsegs, colors=list(colors[who]), linewidths=1.0,
                                                 linestyles=style, alpha=alpha, zorder=5))


def _draw_lights(ax, tl: dt.TrafficLights, time_index: int) -> bool:
    """Traffic-light stop points coloured by their state at ``time_index``; True if any was drawn."""
    lv = _np(tl.valid)[time_index].astype(bool)
    if lv.any():
        sp = _np(tl.stop_point)[time_index][lv]
        lc = [_LIGHT_COLORS.get(int(s), "#7f7f7f") for s in _np(tl.state)[time_index][lv]]
        ax.scatter(sp[:, 0], sp[:, 1], c=lc, s=45, marker="o", zorder=6, edgecolors="black", linewidths=0.8)
    return bool(lv.any())


def _draw_boxes(ax, a: dt.Agents, colors: np.ndarray, time_index: int) -> None:
    """Boxes of the agents valid at ``time_index`` (SDC and evaluated agents outlined), with a heading tick."""
    now = _np(a.valid).astype(bool)[:, time_index]
    if not now.any():
        return
    x, y = _np(a.x)[now, time_index], _np(a.y)[now, time_index]
    h, length = _np(a.heading)[now, time_index], _np(a.length)[now, time_index]
    # Numpy in, numpy out: the geometry's corners without JAX.
    corners = geo.box_corners(x, y, length, _np(a.width)[now, time_index], h)
    is_sdc = _np(a.is_sdc).astype(bool)[now]
    edge = np.where(is_sdc, "black", "#303030")
    lw = np.where(is_sdc, 1.8, 0.6) + np.where(_np(a.eval_mask).astype(bool)[now], 0.6, 0.0)
    ax.add_collection(PolyCollection(corners, facecolors=list(colors[now]), edgecolors=list(edge),
                                     linewidths=lw, alpha=0.9, zorder=7))
    # A short line from the centre to the front shows the heading.
    front = np.stack([x + 0.5 * length * np.cos(h), y + 0.5 * length * np.sin(h)], -1)
    ax.add_collection(LineCollection(np.stack([np.stack([x, y], -1), front], 1), colors="white",
                                     linewidths=0.6, zorder=8))


def _set_view(ax, scenario: dt.Scenario, time_index: int, zoom: bool, margin: float) -> None:
    """Axis limits (the agents valid at ``time_index`` when zoomed, else the road graph), equal aspect."""
    if zoom:
        x0, x1, y0, y1 = scene_bounds(scenario, time_index, margin)
    else:
        rg = scenario.roadgraph
        pts = _np(rg.xyz)[_np(rg.valid).astype(bool)]
        x0, x1, y0, y1 = pts[:, 0].min(), pts[:, 0].max(), pts[:, 1].min(), pts[:, 1].max()
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_aspect("equal")


def _draw_legend(ax, a: dt.Agents, lights_shown: bool) -> None:
    """A small legend: the agent types present, the SDC, signals, history and logged future."""
    types, valid = _np(a.type), _np(a.valid).astype(bool)
    present = sorted({int(t) for t in types[valid.any(-1)]})
    handles = [Line2D([], [], marker="s", ls="", color=AGENT_COLORS.get(t, "grey"), label=dt.AGENT_TYPE_NAMES[t])
               for t in present if t in dt.AGENT_TYPE_NAMES]
    if _np(a.is_sdc).astype(bool).any():
        handles.append(Line2D([], [], marker="s", ls="", color=SDC_COLOR, label="SDC"))
    if lights_shown:
        handles.append(Line2D([], [], marker="o", ls="", color="#2ca02c", markeredgecolor="black",
                              label="signal (state at t)"))
    handles.append(Line2D([], [], color="black", label="history"))
    handles.append(Line2D([], [], color="black", ls=(0, (2, 2)), alpha=0.6, label="future (log)"))
    ax.legend(handles=handles, fontsize=7, loc="upper right", framealpha=0.8)


def _plot_rollouts(ax, rollout_xy: np.ndarray, rollout_valid, colors: np.ndarray) -> None:
    """Rollouts as thin lines in each agent's colour, fainter the more there are."""
    r = rollout_xy if rollout_xy.ndim == 4 else rollout_xy[None]
    v = np.ones(r.shape[:-1], bool) if rollout_valid is None else _np(rollout_valid).astype(bool)
    v = v if v.ndim == 3 else v[None]
    v = v & np.isfinite(r).all(-1)
    alpha = max(0.15, 1.0 / np.sqrt(r.shape[0]))
    for k in range(r.shape[0]):  # a handful of rollouts: one collection each
        segs, who = _trail_segments(r[k], v[k])
        if len(segs):
            ax.add_collection(LineCollection(segs, colors=list(colors[who]), linewidths=0.7, alpha=alpha, zorder=4))


def render_png(scenario: dt.Scenario, path: str, *, size_inches: float = 9.0, dpi: int = 130, **kwargs) -> str:
    """Renders one scene to a PNG file with the Agg backend; ``kwargs`` go to ``plot_scenario``."""
    fig = Figure(figsize=(size_inches, size_inches), dpi=dpi)
    ax = fig.add_subplot(1, 1, 1)
    plot_scenario(ax, scenario, **kwargs)
    # Fit the figure to the scene's shape (a straight road is long and thin), within limits.
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    aspect = float(np.clip((y1 - y0) / max(x1 - x0, 1e-6), 0.45, 2.2))
    fig.set_size_inches(size_inches / max(1.0, aspect), size_inches * min(1.0, aspect) + 0.6)
    fig.tight_layout()
    fig.savefig(path)
    return path
