"""The stochastic expert's behaviour over many scenes (dpa_omf.synthetic.expert, traffic)."""

import numpy as np

from dpa_omf import datatypes as dt


def test_queues_at_red_and_lights_change(stat_scenes):
    """Signalled scenes have light changes and vehicles standing still at red lights."""
    stopped_at_red = 0
    changed = 0
    for s in stat_scenes:
        tl, a = s.traffic_lights, s.agents
        if not tl.valid.any():
            continue
        changed += int((tl.state[1:] != tl.state[:-1]).any())
        veh = a.valid & (a.type == dt.AGENT_TYPE_VEHICLE)[:, None]
        slow = veh & (np.hypot(a.vel_x, a.vel_y) < 0.2)
        for k in np.nonzero(tl.valid[0])[0]:
            sp = tl.stop_point[:, k, :2]  # [T, 2]
            near = np.hypot(a.x - sp[None, :, 0], a.y - sp[None, :, 1]) < 6.0
            red = tl.state[:, k] == dt.TL_STOP
            stopped_at_red += int((slow & near & red[None]).any(1).sum())
    assert changed >= 5 and stopped_at_red >= 5
