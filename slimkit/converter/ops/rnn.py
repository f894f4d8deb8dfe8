"""LSTM and GRU (``aten.lstm.input`` / ``aten.gru.input``).

With ``unroll_rnn=False`` (default) an LSTM with zero initial state whose final cell state is unused
becomes one UNIDIRECTIONAL_SEQUENCE_LSTM per layer, or one BIDIRECTIONAL_SEQUENCE_LSTM (outputs
merged: forward then reverse features, as PyTorch) per layer when bidirectional. Everything else
(GRU, given initial states, a used final cell state, ``unroll_rnn=True``) is unrolled: one FULLY_CONNECTED for the
input projection of all steps, then per step a recurrent FULLY_CONNECTED and the gate arithmetic.
"""

from __future__ import annotations

import numpy as np
import torch

from slimkit.converter import layout
from slimkit.converter.ops.elementwise import binary, unary
from slimkit.converter.ops.linear import fully_connected
from slimkit.converter.ops.shape import XNNPACK_CONCAT_INPUTS, cat_tensors, reshape_to, strided_slice
from slimkit.converter.registry import register


def _np(t):
    return np.asarray(t.detach().cpu().numpy(), dtype=np.float32)


def _layer_params(params, has_biases, num_layers, directions):
    per = 4 if has_biases else 2
    out = []
    for i in range(num_layers * directions):
        p = [_np(w) for w in params[i * per:(i + 1) * per]]
        if not has_biases:
            p += [np.zeros(p[0].shape[0], np.float32), np.zeros(p[0].shape[0], np.float32)]
        out.append(p)
    return out


def _zero_or_none(state):
    return isinstance(state, torch.Tensor) and not bool(state.any())


def _state(ctx, state, index, batch, hidden):
    """Initial state of layer/direction ``index``: None when zero, else a (B, H) tensor."""
    if state is None or _zero_or_none(state):
        return None
    if isinstance(state, torch.Tensor):
        return ctx.const(_np(state[index]))
    state = ctx.layout(state, layout.identity(3))
    return strided_slice(ctx, state, 0, index, index + 1, 1, shrink=True)


def _split(ctx, x, parts):
    b, width = x.shape
    outs = [ctx.tensor((b, width // parts)) for _ in range(parts)]
    ctx.emit("SPLIT", [ctx.const(np.array(1, np.int32)), x], outs, NumSplits=parts)
    return outs


def _fc_step(ctx, h, w, bias, batch):
    return fully_connected(ctx, h, w, bias, (batch, w.shape[0]))


def _gate_parts(ctx, h, w, bias, parts, batch):
    """``h @ w.T + bias`` per gate: one FULLY_CONNECTED per gate (``separated_rnn_gate_calc``) or one and a SPLIT."""
    if not ctx.options.separated_rnn_gate_calc:
        return _split(ctx, _fc_step(ctx, h, w, bias, batch), parts)
    biases = [None] * parts if bias is None else np.split(bias, parts)
    return [_fc_step(ctx, h, wg, bg, batch) for wg, bg in zip(np.split(w, parts), biases)]


def _run_direction(ctx, kind, xs_proj, params, h, c, reverse, batch, hidden):
    """The steps of one direction; ``xs_proj[t]`` is step t's input projection, one tensor or (separated gate
    calculation) a list of one tensor per gate."""
    w_ih, w_hh, b_ih, b_hh = params
    steps = range(len(xs_proj) - 1, -1, -1) if reverse else range(len(xs_proj))
    outs = [None] * len(xs_proj)
    for t in steps:
        xp = xs_proj[t]
        if kind == "lstm" and isinstance(xp, list):
            i, f, g, o = xp if h is None else [binary(ctx, "ADD", x, r, FusedActivationFunction=0)
                                               for x, r in zip(xp, _gate_parts(ctx, h, w_hh, None, 4, batch))]
        elif kind == "lstm":
            gates = xp if h is None else binary(ctx, "ADD", xp, _fc_step(ctx, h, w_hh, None, batch),
                                                FusedActivationFunction=0)
            i, f, g, o = _split(ctx, gates, 4)
        if kind == "lstm":
            i, f, o = (unary(ctx, "LOGISTIC", v) for v in (i, f, o))
            g = unary(ctx, "TANH", g)
            ig = binary(ctx, "MUL", i, g, FusedActivationFunction=0)
            c = ig if c is None else binary(ctx, "ADD", binary(ctx, "MUL", f, c, FusedActivationFunction=0), ig,
                                           FusedActivationFunction=0)
            h = binary(ctx, "MUL", o, unary(ctx, "TANH", c), FusedActivationFunction=0)
        else:
            xr, xz, xn = xp if isinstance(xp, list) else _split(ctx, xp, 3)
            hr, hz, hn = [ctx.const(np.broadcast_to(b, (batch, b.size)).copy()) for b in np.split(b_hh, 3)] \
                if h is None else _gate_parts(ctx, h, w_hh, b_hh, 3, batch)
            r = unary(ctx, "LOGISTIC", binary(ctx, "ADD", xr, hr, FusedActivationFunction=0))
            z = unary(ctx, "LOGISTIC", binary(ctx, "ADD", xz, hz, FusedActivationFunction=0))
            n = unary(ctx, "TANH", binary(ctx, "ADD", xn, binary(ctx, "MUL", r, hn, FusedActivationFunction=0),
                                          FusedActivationFunction=0))
            if h is None:  # h = (1 - z) * n
                h = binary(ctx, "SUB", n, binary(ctx, "MUL", z, n, FusedActivationFunction=0),
                           FusedActivationFunction=0)
            else:  # h = n + z * (h - n)
                d = binary(ctx, "SUB", h, n, FusedActivationFunction=0)
                h = binary(ctx, "ADD", n, binary(ctx, "MUL", z, d, FusedActivationFunction=0),
                           FusedActivationFunction=0)
        outs[t] = h
    return outs, h, c


def _pack(ctx, tensors, axis, shape):
    """``torch.stack(tensors, axis)``: CONCATENATIONs along ``axis`` (of at most XNNPACK_CONCAT_INPUTS inputs, in two
    levels) and a RESHAPE, which XNNPACK runs (it takes no PACK); PACK past two levels."""
    if len(tensors) > XNNPACK_CONCAT_INPUTS ** 2 or axis >= tensors[0].rank:
        out = ctx.tensor(shape)
        ctx.emit("PACK", tensors, [out], ValuesCount=len(tensors), Axis=axis)
        return out
    parts = [cat_tensors(ctx, tensors[i:i + XNNPACK_CONCAT_INPUTS], axis)
             for i in range(0, len(tensors), XNNPACK_CONCAT_INPUTS)]
    return reshape_to(ctx, cat_tensors(ctx, parts, axis), shape)


def _unrolled(ctx, node, kind, a, hx):
    x = ctx.layout(a["input"], layout.identity(3))
    batch_first = bool(a["batch_first"])
    layers, directions = int(a["num_layers"]), 2 if a["bidirectional"] else 1
    params = _layer_params(a["params"], a["has_biases"], layers, directions)
    hidden = params[0][1].shape[1]
    batch = x.shape[0] if batch_first else x.shape[1]
    steps = x.shape[1] if batch_first else x.shape[0]
    h0, c0 = (hx[0], hx[1]) if kind == "lstm" else (hx, None)
    h_n, c_n = [], []
    seq = x
    for layer in range(layers):
        dir_outs = []
        for d in range(directions):
            idx = layer * directions + d
            w_ih, w_hh, b_ih, b_hh = params[idx]
            bias = b_ih + b_hh if kind == "lstm" else b_ih
            time_axis = 1 if batch_first else 0
            xs = _input_projections(ctx, seq, w_ih, bias, 4 if kind == "lstm" else 3, time_axis, steps)
            h = _state(ctx, h0, idx, batch, hidden)
            c = _state(ctx, c0, idx, batch, hidden) if kind == "lstm" else None
            outs, h, c = _run_direction(ctx, kind, xs, params[idx], h, c, d == 1, batch, hidden)
            h_n.append(h)
            c_n.append(c)
            shape = (batch, steps, hidden) if batch_first else (steps, batch, hidden)
            dir_outs.append(_pack(ctx, outs, time_axis, shape))
        if directions == 1:
            seq = dir_outs[0]
        else:
            shape = tuple(dir_outs[0].shape[:2]) + (2 * hidden,)
            seq = ctx.tensor(shape)
            ctx.emit("CONCATENATION", dir_outs, [seq], Axis=2, FusedActivationFunction=0)
    hn = _pack(ctx, h_n, 0, (len(h_n), batch, hidden))
    if kind == "gru":
        return (seq, hn)
    cn = _pack(ctx, c_n, 0, (len(c_n), batch, hidden))
    return (seq, hn, cn)


def _input_projections(ctx, seq, w_ih, bias, parts, time_axis, steps):
    """Every step's input projection: one FULLY_CONNECTED over all steps (one per gate when
    ``separated_rnn_gate_calc``), sliced per step."""
    if ctx.options.separated_rnn_gate_calc:
        projs = [fully_connected(ctx, seq, w, b, tuple(seq.shape[:2]) + (w.shape[0],))
                 for w, b in zip(np.split(w_ih, parts), np.split(bias, parts))]
        return [[strided_slice(ctx, p, time_axis, t, t + 1, 1, shrink=True) for p in projs] for t in range(steps)]
    proj = fully_connected(ctx, seq, w_ih, bias, tuple(seq.shape[:2]) + (w_ih.shape[0],))
    return [strided_slice(ctx, proj, time_axis, t, t + 1, 1, shrink=True) for t in range(steps)]


def _direction_inputs(ctx, params):
    """The 15 weight inputs of one direction (TFLite gate order i, f, c, o = PyTorch's i, f, g, o): input and
    recurrent weights, no peepholes, gate biases, no projection."""
    w_ih, w_hh, b_ih, b_hh = params
    return [*[ctx.const(w) for w in np.split(w_ih, 4)], *[ctx.const(w) for w in np.split(w_hh, 4)],
            None, None, None, *[ctx.const(b) for b in np.split(b_ih + b_hh, 4)], None, None]


def _variable_state(ctx, node, layer, direction, batch, hidden):
    states = []
    for kind in ("h", "c"):
        t = ctx.tensor((batch, hidden), name=f"{node.name}_{kind}{layer}{'_reverse' if direction else ''}")
        t.is_variable = True
        states.append(t)
    return states


def _sequence_lstm(ctx, node, a):
    """One UNIDIRECTIONAL_SEQUENCE_LSTM (or BIDIRECTIONAL_SEQUENCE_LSTM with merged outputs) per layer.

    LiteRT's BIDIRECTIONAL_SEQUENCE_LSTM gives wrong values for batch entries after the first in batch-major
    mode (time_major=False), so a bidirectional batch_first LSTM runs time-major: its input and output are
    stored (T, B, F) (one TRANSPOSE at each end of the stack of layers, where a neighbour needs (B, T, F)).
    """
    batch_first = bool(a["batch_first"])
    layers, directions = int(a["num_layers"]), 2 if a["bidirectional"] else 1
    mapped = directions == 2 and ctx.options.map_bilstm_to_lstm
    time_major = not batch_first or (directions == 2 and not mapped)
    order = (1, 0, 2) if batch_first and time_major else layout.identity(3)
    x = ctx.layout(a["input"], order)
    params = _layer_params(a["params"], a["has_biases"], layers, directions)
    hidden = params[0][1].shape[1]
    batch = x.shape[0] if batch_first else x.shape[1]
    steps = x.shape[1] if batch_first else x.shape[0]
    time_axis = 1 if batch_first else 0
    shape = (batch, steps, directions * hidden) if batch_first else (steps, batch, directions * hidden)
    options = dict(FusedActivationFunction=4, CellClip=0.0, ProjClip=0.0, TimeMajor=time_major,
                   AsymmetricQuantizeInputs=bool(ctx.options.hybrid))
    seq = x
    last = []
    for layer in range(layers):
        weights = [_direction_inputs(ctx, params[layer * directions + d]) for d in range(directions)]
        states = [_variable_state(ctx, node, layer, d, batch, hidden) for d in range(directions)]
        out = ctx.tensor(shape, perm=order)
        if directions == 1:
            inputs = [seq, *weights[0], *states[0], None, None, None, None]
            ctx.emit("UNIDIRECTIONAL_SEQUENCE_LSTM", inputs, [out], **options)
            last.append(strided_slice(ctx, out, time_axis, steps - 1, steps, 1, shrink=True))
        elif mapped:  # two UNIDIRECTIONAL_SEQUENCE_LSTM, the backward one on the time-reversed sequence
            halves = []
            for d in range(2):
                half = ctx.tensor(shape[:2] + (hidden,), perm=order)
                x_d = _reverse_time(ctx, seq, time_axis) if d else seq
                ctx.emit("UNIDIRECTIONAL_SEQUENCE_LSTM", [x_d, *weights[d], *states[d], None, None, None, None],
                         [half], **options)
                halves.append(_reverse_time(ctx, half, time_axis) if d else half)
            ctx.emit("CONCATENATION", halves, [out], Axis=2, FusedActivationFunction=0)
        else:  # no auxiliary input: its 8 weights are absent too
            inputs = [seq, *weights[0], *weights[1], *states[0], *states[1], *[None] * 9]
            ctx.emit("BIDIRECTIONAL_SEQUENCE_LSTM", inputs, [out], MergeOutputs=True, **options)
        if directions == 2:
            for d, step in ((0, steps - 1), (1, 0)):  # the reverse direction ends at step 0
                at = strided_slice(ctx, out, time_axis, step, step + 1, 1, shrink=True)
                last.append(strided_slice(ctx, at, 1, d * hidden, (d + 1) * hidden, 1))
        seq = out
    hn = _pack(ctx, last, 0, (len(last), batch, hidden)) if len(last) > 1 else \
        _reshape(ctx, last[0], (1, batch, hidden))
    return (seq, hn, None)


def _reverse_time(ctx, x, time_axis):
    out = ctx.tensor(x.shape, perm=x.perm)
    ctx.emit("REVERSE_V2", [x, ctx.const(np.array([x.order.index(time_axis)], np.int32))], [out])
    return out


def _reshape(ctx, x, shape):
    out = ctx.tensor(shape)
    ctx.emit("RESHAPE", [x, ctx.const(np.array(shape, np.int32))], [out], NewShape=list(shape))
    return out


@register("aten.lstm.input", emits=("UNIDIRECTIONAL_SEQUENCE_LSTM", "BIDIRECTIONAL_SEQUENCE_LSTM", "REVERSE_V2",
                                    "FULLY_CONNECTED", "STRIDED_SLICE", "SPLIT", "LOGISTIC", "TANH", "MUL", "ADD",
                                    "CONCATENATION", "RESHAPE", "PACK"))
def lstm(ctx, node, a):
    hx = a["hx"]
    cell_used = any(u.args[1] == 2 and len(u.users) for u in node.users)
    if not ctx.options.unroll_rnn and not cell_used and all(_zero_or_none(s) for s in hx):
        return _sequence_lstm(ctx, node, a)
    return _unrolled(ctx, node, "lstm", a, hx)


@register("aten.gru.input", emits=("FULLY_CONNECTED", "STRIDED_SLICE", "SPLIT", "LOGISTIC", "TANH", "MUL", "ADD",
                                   "SUB", "CONCATENATION", "RESHAPE", "PACK"))
def gru(ctx, node, a):
    return _unrolled(ctx, node, "gru", a, a["hx"])
