"""Multi-layer perceptron block."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ctrkit.pytorch.layers._checks import check_activation, check_bool, check_int, check_prob, check_units


def make_activation(name: str) -> nn.Module:
    """Build an activation module from its name (see ``ACTIVATIONS``); unknown -> ConfigError."""
    key = check_activation("activation", name)
    return {
        "relu": nn.ReLU,
        "leaky_relu": nn.LeakyReLU,
        "elu": nn.ELU,
        "selu": nn.SELU,
        "gelu": nn.GELU,
        "silu": nn.SiLU,
        "tanh": nn.Tanh,
        "sigmoid": nn.Sigmoid,
        "identity": nn.Identity,
    }[key]()


def init_linear(layer: nn.Linear | nn.Conv1d) -> None:
    """Xavier (Glorot) normal weights, zero bias -- the project-wide initialiser."""
    nn.init.xavier_normal_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


class MLP(nn.Module):
    """Feed-forward tower: ``[Linear -> BatchNorm1d? -> activation -> Dropout] x len(hidden_units)``,
    then an optional output ``Linear(hidden_units[-1], output_dim)``.

    The deep component of DeepFM/DCN/xDeepFM/AutoInt+ (e.g. Guo et al., IJCAI 2017,
    https://arxiv.org/abs/1703.04247): ``a^{l+1} = act(W^l a^l + b^l)``.
    Weights Xavier-normal, biases zero.

    Args:
        input_dim: width of the input.
        hidden_units: sizes of the hidden layers (may be empty).
        activation: name of the activation (``relu`` default, see ``_checks.ACTIVATIONS``).
        dropout: dropout rate after each hidden activation, in [0, 1).
        batch_norm: insert ``BatchNorm1d`` between each hidden Linear and its activation.
        output_dim: width of a final plain Linear layer, or None for no output layer.

    Shapes: ``[B, input_dim]`` -> ``[B, output_dim or hidden_units[-1] or input_dim]``.

    Example::

        mlp = MLP(64, (32, 16), output_dim=1)
        mlp(torch.randn(8, 64)).shape  # torch.Size([8, 1])
    """

    def __init__(
        self,
        input_dim: int,
        hidden_units: Sequence[int] = (400, 400, 400),
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
        output_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.input_dim = check_int("input_dim", input_dim)
        self.hidden_units = check_units("hidden_units", hidden_units)
        dropout = check_prob("dropout", dropout)
        batch_norm = check_bool("batch_norm", batch_norm)
        check_activation("activation", activation)
        layers: list[nn.Module] = []
        width = self.input_dim
        for units in self.hidden_units:
            layers.append(nn.Linear(width, units))
            if batch_norm:
                layers.append(nn.BatchNorm1d(units))
            layers.append(make_activation(activation))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = units
        if output_dim is not None:
            layers.append(nn.Linear(width, check_int("output_dim", output_dim)))
            width = int(output_dim)
        self.layers = nn.Sequential(*layers)
        self.output_dim = width
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in self.layers:
            if isinstance(module, nn.Linear):
                init_linear(module)
            elif isinstance(module, nn.BatchNorm1d):
                module.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)  # (B, output_dim)
