"""Recurrent layers (LSTM / GRU); see slimkit.converter.rnn for the lowering."""

from __future__ import annotations
