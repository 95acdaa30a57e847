"""Replay a model call as one CUDA graph: the GPU runs the whole UNet forward without waiting for Python.

In eager mode the host launches every kernel of a forward one by one (about 600 for the SD 1.5 UNet). At small
batch sizes the GPU finishes each kernel sooner than the host can queue the next, so a sampling step takes as long
as the Python code does, not as the arithmetic does. A CUDA graph records the launches once and replays them with
one call (PyTorch's ``torch.cuda.graph``; see the "CUDA Graphs" section of the PyTorch CUDA semantics notes).

A graph replays fixed memory: the inputs are copied into buffers that were captured, and the output is a buffer that
the next replay overwrites (``CUDAGraphModel`` returns a copy, so callers can keep it). It also replays fixed shapes
and fixed non-tensor arguments: each new combination is captured once, on first use, and kept.

    graphed = CUDAGraphModel(unet)              # unet: any module on a CUDA device, in eval mode
    eps = graphed(x_t, t, context, class_labels=labels)   # first call per shape: warm-up + capture; then replays

``ldm.guided_sampling.sample(..., cuda_graph=True)`` does this for its model calls. Training is not graphed (autograd).
"""
from __future__ import annotations

from typing import Any, Callable

import torch


class CUDAGraphModel:
    """Wraps ``model(*args, **kwargs) -> Tensor`` so that each call replays a captured CUDA graph.

    Args:
        model: a callable on a CUDA device whose output is one tensor and that makes no host-device
            synchronisation (ldm's UNet, VAE decoder and VQ decoder qualify). A graph reads the memory it was
            captured with: weights may change in place between calls (an optimizer or EMA step, load_state_dict;
            ldm's models derive nothing from their weights while a graph is captured), but a model whose weights
            were replaced (.to(), load_state_dict(assign=True)) needs a new CUDAGraphModel.
        warmup: eager calls on a side stream before capturing (lets cuDNN/cuBLAS pick and cache their kernels).
    """

    def __init__(self, model: Callable[..., torch.Tensor], warmup: int = 2):
        if not torch.cuda.is_available():
            raise ValueError("CUDAGraphModel needs a CUDA device; torch.cuda.is_available() is False")
        self.model = model
        self.warmup = warmup
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, list[torch.Tensor], torch.Tensor]] = {}

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        tensors, key = _split(args, kwargs)
        if not tensors or any(t.device.type != "cuda" for t in tensors):
            raise ValueError("CUDAGraphModel: every tensor argument must be on a CUDA device, got "
                             f"{sorted({str(t.device) for t in tensors}) or 'no tensors'}")
        if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
            raise ValueError("CUDAGraphModel replays inference only: call it under torch.no_grad()")
        if key not in self.graphs:
            self.graphs[key] = self._capture(args, kwargs, tensors)
        graph, static_inputs, static_output = self.graphs[key]
        for buffer, value in zip(static_inputs, tensors):
            buffer.copy_(value)
        graph.replay()
        return static_output.clone()   # the next replay overwrites static_output

    def _capture(self, args, kwargs, tensors):
        static_inputs = [t.clone() for t in tensors]
        args, kwargs = _substitute(args, kwargs, iter(static_inputs))
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.no_grad(), torch.cuda.stream(side):   # warm-up off the default stream, as capture requires
            for _ in range(self.warmup):
                self.model(*args, **kwargs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(graph):
            static_output = self.model(*args, **kwargs)
        if not isinstance(static_output, torch.Tensor):
            raise ValueError(f"CUDAGraphModel: the model must return one tensor, got {type(static_output).__name__}")
        return graph, static_inputs, static_output


def _split(args, kwargs) -> tuple[list[torch.Tensor], tuple]:
    """The tensor arguments in order, and a hashable key: each tensor's shape/dtype/device/layout, the rest as is."""
    tensors, key = [], []
    for name, value in [*enumerate(args), *sorted(kwargs.items())]:
        if isinstance(value, torch.Tensor):
            tensors.append(value)
            key.append((name, tuple(value.shape), value.dtype, value.device, value.stride()))
        else:
            key.append((name, value))   # a non-tensor argument is baked into the graph
    return tensors, tuple(key)


def _substitute(args, kwargs, buffers) -> tuple[tuple, dict[str, Any]]:
    """args and kwargs with every tensor replaced by the next static buffer (same order as _split)."""
    args = tuple(next(buffers) if isinstance(a, torch.Tensor) else a for a in args)
    kwargs = {k: next(buffers) if isinstance(v, torch.Tensor) else v for k, v in sorted(kwargs.items())}
    return args, kwargs
