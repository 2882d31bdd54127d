"""Convert models between minicnn and PyTorch, weights included.

Parameter names and shapes already match PyTorch's (see the API), so the
conversion is bookkeeping: each minicnn layer becomes the torch module with the
same numerics, reading its hyper-parameters from ``layer.get_config()`` and
copying ``params`` and ``buffers``::

    Conv2D(16, 3, padding=1, activation='relu') -> nn.Conv2d(C, 16, 3, padding=1), nn.ReLU()
    Conv2D(16, 4, padding='same')               -> nn.ZeroPad2d((1, 2, 1, 2)), nn.Conv2d(C, 16, 4)
    DepthwiseConv2D(3, depth_multiplier=2)      -> nn.Conv2d(C, 2C, 3, groups=C)
    Dense(10)                                   -> nn.Linear(F, 10)

``'same'`` padding depends on the input size, so the model must be built.
Torch is imported only when a conversion runs.
"""
from __future__ import annotations

import numpy as np

from . import backend
from .layers import shapes

__all__ = ["to_torch", "from_torch"]


def _torch():
    try:
        import torch
    except ImportError as exc:
        raise ImportError("minicnn.interop needs PyTorch, which is not installed "
                          "(`pip install torch`, or `pip install -e .[test]` in a checkout)") from exc
    return torch


# ---------------------------------------------------------------------- minicnn -> torch
def to_torch(model):
    """An equivalent ``torch.nn.Sequential`` (float32 or float64, as the model) in eval mode.

    Residual and Concatenate containers become small torch modules with the same
    attribute names (``block``/``shortcut``, ``branches``), so their state dicts match.
    """
    torch = _torch()
    if not model.built:
        raise ValueError(f"to_torch: {model.name} is not built; call model.build(input_shape) first "
                         f"(the torch modules need every layer's input size)")
    module = _convert(model, tuple(model.input_shape), torch)
    module = module.to(torch.float64 if np.dtype(model.dtype) == np.float64 else torch.float32)
    return module.eval()


def _convert(layer, input_shape, torch):
    nn = torch.nn
    kind = type(layer).__name__
    config = layer.get_config()
    if kind in _CONTAINERS:
        return _CONTAINERS[kind](layer, input_shape, torch)
    if kind in _SIMPLE:
        return _SIMPLE[kind](config, layer, input_shape, nn)
    raise ValueError(f"to_torch: no torch equivalent for minicnn layer {kind} ({layer.name})")


def _copy_params(module, layer, torch, names=None):
    """Copy ``layer.params`` / ``buffers`` into ``module`` (``names`` maps minicnn -> torch names)."""
    names = names or {}
    with torch.no_grad():
        for store in (layer.params, layer.buffers):
            for key, value in store.items():
                target = getattr(module, names.get(key, key))
                target.data = torch.from_numpy(np.array(backend.to_numpy(value)))
    return module


def _conv_padding(layer, config, input_shape, nn):
    """``(pad module or None, padding for the conv)`` reproducing minicnn's padding in torch."""
    pads = shapes.resolve_padding(config.get("padding", 0), shapes.as_pair(config["kernel_size"], "", ""),
                                  shapes.as_pair(config.get("stride", 1), "", ""),
                                  shapes.as_pair(config.get("dilation", 1), "", ""),
                                  input_shape[1:], layer.name)
    top, bottom, left, right = pads
    if top == bottom and left == right:
        return None, (top, left)
    return nn.ZeroPad2d((left, right, top, bottom)), (0, 0)  # torch orders (left, right, top, bottom)


def _with_activation(modules, config, nn):
    activation = config.get("activation")
    if activation is not None:
        modules.append(_activation_module(activation, nn))
    return modules[0] if len(modules) == 1 else nn.Sequential(*modules)


def _activation_module(name, nn):
    table = {"relu": nn.ReLU, "leaky_relu": lambda: nn.LeakyReLU(0.01), "elu": nn.ELU,
             "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "softmax": lambda: nn.Softmax(dim=1)}
    return table[name]()


def _conv2d(config, layer, input_shape, nn, groups=1):
    weight = layer.params["weight"]
    pad_module, padding = _conv_padding(layer, config, input_shape, nn)
    in_channels = input_shape[0]
    conv = nn.Conv2d(in_channels, weight.shape[0], tuple(weight.shape[2:]),
                     stride=shapes.as_pair(config.get("stride", 1), "", ""), padding=padding,
                     dilation=shapes.as_pair(config.get("dilation", 1), "", ""),
                     groups=in_channels if groups is None else groups, bias="bias" in layer.params)
    _copy_params(conv, layer, _torch())
    return _with_activation([m for m in (pad_module, conv) if m is not None], config, nn)


def _separable(config, layer, input_shape, nn):
    torch = _torch()
    depthwise_weight = layer.params["depthwise_weight"]
    pointwise_weight = layer.params["pointwise_weight"]
    pad_module, padding = _conv_padding(layer, config, input_shape, nn)
    depthwise = nn.Conv2d(input_shape[0], depthwise_weight.shape[0], tuple(depthwise_weight.shape[2:]),
                          stride=shapes.as_pair(config.get("stride", 1), "", ""), padding=padding,
                          dilation=shapes.as_pair(config.get("dilation", 1), "", ""),
                          groups=input_shape[0], bias=False)
    pointwise = nn.Conv2d(pointwise_weight.shape[1], pointwise_weight.shape[0], 1, bias="bias" in layer.params)
    with torch.no_grad():
        depthwise.weight.data = torch.from_numpy(np.array(backend.to_numpy(depthwise_weight)))
        pointwise.weight.data = torch.from_numpy(np.array(backend.to_numpy(pointwise_weight)))
        if "bias" in layer.params:
            pointwise.bias.data = torch.from_numpy(np.array(backend.to_numpy(layer.params["bias"])))
    return _with_activation([m for m in (pad_module, depthwise, pointwise) if m is not None], config, nn)


def _transpose(config, layer, input_shape, nn):
    padding = config.get("padding", 0)
    padding = 0 if padding == "valid" else padding
    if isinstance(padding, str):
        raise ValueError(f"to_torch: {layer.name} padding {padding!r} has no nn.ConvTranspose2d equivalent")
    weight = layer.params["weight"]
    conv = nn.ConvTranspose2d(weight.shape[0], weight.shape[1], tuple(weight.shape[2:]),
                              stride=config.get("stride", 1), padding=padding,
                              output_padding=config.get("output_padding", 0), bias="bias" in layer.params)
    _copy_params(conv, layer, _torch())
    return _with_activation([conv], config, nn)


def _dense(config, layer, input_shape, nn):
    weight = layer.params["weight"]
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in layer.params)
    _copy_params(linear, layer, _torch())
    return _with_activation([linear], config, nn)


def _batchnorm(config, layer, input_shape, nn):
    cls = nn.BatchNorm2d if type(layer).__name__ == "BatchNorm2D" else nn.BatchNorm1d
    module = cls(input_shape[0], eps=config.get("eps", 1e-5), momentum=config.get("momentum", 0.1))
    return _copy_params(module, layer, _torch())


def _pool(config, layer, input_shape, nn):
    pool_size = config.get("pool_size", 2)
    stride = config.get("stride") or pool_size
    padding = config.get("padding", 0)
    padding = 0 if padding == "valid" else padding
    if type(layer).__name__ == "MaxPool2D":
        return nn.MaxPool2d(pool_size, stride, padding)
    return nn.AvgPool2d(pool_size, stride, padding)  # count_include_pad=True, as minicnn


_SIMPLE = {
    "Conv2D": _conv2d,
    "DepthwiseConv2D": lambda c, layer, s, nn: _conv2d(c, layer, s, nn, groups=None),
    "SeparableConv2D": _separable,
    "Conv2DTranspose": _transpose,
    "Dense": _dense,
    "BatchNorm1D": _batchnorm,
    "BatchNorm2D": _batchnorm,
    "MaxPool2D": _pool,
    "AvgPool2D": _pool,
    "GlobalAvgPool2D": lambda c, layer, s, nn: nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()),
    "GlobalMaxPool2D": lambda c, layer, s, nn: nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten()),
    "UpSampling2D": lambda c, layer, s, nn: nn.Upsample(scale_factor=c.get("size", 2), mode="nearest"),
    "Flatten": lambda c, layer, s, nn: nn.Flatten(),
    "Reshape": lambda c, layer, s, nn: nn.Unflatten(1, tuple(layer.output_shape(s))),
    "Dropout": lambda c, layer, s, nn: nn.Dropout(c["rate"]),
    "SpatialDropout2D": lambda c, layer, s, nn: nn.Dropout2d(c["rate"]),
    # Identity in evaluation; their training-time effects (noise, an activity penalty)
    # have no torch module, so the converted model matches for inference only.
    "GaussianNoise": lambda c, layer, s, nn: nn.Identity(),
    "ActivityRegularization": lambda c, layer, s, nn: nn.Identity(),
    "Identity": lambda c, layer, s, nn: nn.Identity(),
    "ReLU": lambda c, layer, s, nn: nn.ReLU(),
    "LeakyReLU": lambda c, layer, s, nn: nn.LeakyReLU(c.get("alpha", 0.01)),
    "ELU": lambda c, layer, s, nn: nn.ELU(c.get("alpha", 1.0)),
    "Sigmoid": lambda c, layer, s, nn: nn.Sigmoid(),
    "Tanh": lambda c, layer, s, nn: nn.Tanh(),
    "Softmax": lambda c, layer, s, nn: nn.Softmax(dim=c.get("axis", 1)),
}


def _sequential(model, input_shape, torch):
    modules, shape = [], tuple(input_shape)
    for child in model.children():
        modules.append(_convert(child, shape, torch))
        shape = tuple(child.output_shape(shape))
    return torch.nn.Sequential(*modules)


def _residual(layer, input_shape, torch):
    block = _convert(layer.block, input_shape, torch)
    shortcut = None if layer.shortcut is None else _convert(layer.shortcut, input_shape, torch)
    return _torch_modules(torch)["Residual"](block, shortcut)


def _concatenate(layer, input_shape, torch):
    branches = [_convert(branch, input_shape, torch) for branch in layer.children()]
    return _torch_modules(torch)["Concatenate"](branches, layer.get_config().get("axis", 1))


_CONTAINERS = {"Sequential": _sequential, "Autoencoder": _sequential,
               "Residual": _residual, "Concatenate": _concatenate}
_TORCH_MODULES = {}


def _torch_modules(torch):
    """Torch counterparts of Residual and Concatenate, defined once torch is imported."""
    if _TORCH_MODULES:
        return _TORCH_MODULES
    nn = torch.nn

    class Residual(nn.Module):
        """``block(x) + shortcut(x)`` (identity shortcut when ``None``)."""

        def __init__(self, block, shortcut=None):
            super().__init__()
            self.block, self.shortcut = block, shortcut

        def forward(self, x):
            return self.block(x) + (x if self.shortcut is None else self.shortcut(x))

    class Concatenate(nn.Module):
        """Branch outputs joined along ``axis``."""

        def __init__(self, branches, axis=1):
            super().__init__()
            self.branches, self.axis = nn.ModuleList(branches), axis

        def forward(self, x):
            return torch.cat([branch(x) for branch in self.branches], dim=self.axis)

    _TORCH_MODULES.update(Residual=Residual, Concatenate=Concatenate)
    return _TORCH_MODULES


# ---------------------------------------------------------------------- torch -> minicnn
def from_torch(module, input_shape=None):
    """A minicnn ``Sequential`` equivalent to a torch ``nn.Sequential``, weights copied.

    Every module must have a minicnn counterpart (``Conv2d`` with ``groups`` 1 or
    ``in_channels``, ``ConvTranspose2d``, ``Linear``, ``BatchNorm1d/2d``, ``MaxPool2d``,
    ``AvgPool2d``, ``AdaptiveAvg/MaxPool2d(1)`` followed by ``Flatten``, ``Flatten``,
    ``Unflatten``, ``Upsample`` (nearest), ``Dropout``, ``Dropout2d``, ``ZeroPad2d``
    folded into the next ``Conv2d``, activations, nested ``nn.Sequential``);
    otherwise a ValueError names the module. ``input_shape`` (per sample), when
    given, builds the model; the weights are copied either way.
    """
    torch = _torch()
    from .layers.containers import Sequential

    if not isinstance(module, torch.nn.Sequential):
        module = torch.nn.Sequential(module)
    model = Sequential(_convert_torch_list(list(module.children()), "", torch), input_shape=input_shape)
    return model


def _convert_torch_list(modules, path, torch):
    from . import layers as L  # noqa: N812 (layers namespace)

    nn, converted, index = torch.nn, [], 0
    while index < len(modules):
        module, where = modules[index], f"{path}{index}"
        following = modules[index + 1] if index + 1 < len(modules) else None
        if isinstance(module, nn.Sequential):
            converted.append(L.Sequential(_convert_torch_list(list(module.children()), where + ".", torch)))
        elif isinstance(module, nn.ZeroPad2d) and isinstance(following, nn.Conv2d):
            converted.append(_from_conv(following, f"{path}{index + 1}", torch, pad=module.padding))
            index += 1
        elif isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)) \
                and isinstance(following, nn.Flatten) and _is_one(module.output_size):
            converted.append(L.GlobalAvgPool2D() if isinstance(module, nn.AdaptiveAvgPool2d)
                             else L.GlobalMaxPool2D())
            index += 1
        elif isinstance(module, nn.Conv2d):
            converted.append(_from_conv(module, where, torch))
        elif not isinstance(module, nn.Identity):
            converted.append(_from_simple(module, where, torch))
        index += 1
    return converted


def _unsupported(module, where, why=""):
    return ValueError(f"from_torch: no minicnn layer for torch module {type(module).__name__} at "
                      f"'{where}' ({module!r}){': ' + why if why else ''}")


def _is_one(size) -> bool:
    return size == 1 or size == (1, 1)


def _from_conv(conv, where, torch, pad=None):
    from . import layers as L  # noqa: N812

    if conv.padding_mode != "zeros":
        raise _unsupported(conv, where, f"padding_mode {conv.padding_mode!r}; minicnn pads with zeros")
    padding = conv.padding if isinstance(conv.padding, str) else tuple(conv.padding)
    if pad is not None:
        left, right, top, bottom = pad
        if padding != (0, 0):
            raise _unsupported(conv, where, "ZeroPad2d followed by a padded Conv2d")
        if (top, left) == (bottom, right):
            padding = (top, left)
        elif conv.stride == (1, 1) and (top, bottom, left, right) == \
                shapes.same_padding(9, conv.kernel_size[0], 1, conv.dilation[0]) + \
                shapes.same_padding(9, conv.kernel_size[1], 1, conv.dilation[1]):
            padding = "same"  # at stride 1 'same' padding does not depend on the input size
        else:
            raise _unsupported(conv, where, f"asymmetric ZeroPad2d {pad} other than 'same' at stride 1")
    common = dict(stride=tuple(conv.stride), padding=padding, dilation=tuple(conv.dilation),
                  bias=conv.bias is not None, in_channels=conv.in_channels)
    kernel = tuple(conv.kernel_size)
    if conv.groups == 1:
        layer = L.Conv2D(conv.out_channels, kernel, **common)
    elif conv.groups == conv.in_channels:
        layer = L.DepthwiseConv2D(kernel, depth_multiplier=conv.out_channels // conv.in_channels, **common)
    else:
        raise _unsupported(conv, where, f"groups={conv.groups}; minicnn has groups 1 (Conv2D) "
                                        f"and groups=in_channels (DepthwiseConv2D)")
    return _load_torch_state(layer, conv, torch)


def _from_simple(module, where, torch):
    from . import layers as L  # noqa: N812

    nn = torch.nn
    if isinstance(module, nn.Linear):
        layer = L.Dense(module.out_features, bias=module.bias is not None, in_features=module.in_features)
    elif isinstance(module, nn.ConvTranspose2d):
        if module.groups != 1 or tuple(module.dilation) != (1, 1):
            raise _unsupported(module, where, "groups and dilation must be 1")
        layer = L.Conv2DTranspose(module.out_channels, tuple(module.kernel_size), stride=tuple(module.stride),
                                  padding=tuple(module.padding), output_padding=tuple(module.output_padding),
                                  bias=module.bias is not None, in_channels=module.in_channels)
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        if not module.affine or not module.track_running_stats or module.momentum is None:
            raise _unsupported(module, where, "needs affine=True, track_running_stats=True and a momentum")
        layer = (L.BatchNorm2D if isinstance(module, nn.BatchNorm2d) else L.BatchNorm1D)(
            momentum=module.momentum, eps=module.eps)
        layer.build((module.num_features,) + ((1, 1) if isinstance(module, nn.BatchNorm2d) else ()))
    else:
        layer = _from_parameter_free(module, where, nn, L)
    return _load_torch_state(layer, module, torch)


def _from_parameter_free(module, where, nn, L):  # noqa: N803
    if isinstance(module, nn.MaxPool2d):
        if _pair(module.dilation) != (1, 1) or module.ceil_mode or module.return_indices:
            raise _unsupported(module, where, "needs dilation=1, ceil_mode=False, return_indices=False")
        return L.MaxPool2D(_pair(module.kernel_size), _pair(module.stride), _pair(module.padding))
    if isinstance(module, nn.AvgPool2d):
        if module.ceil_mode or not module.count_include_pad or module.divisor_override is not None:
            raise _unsupported(module, where, "needs ceil_mode=False, count_include_pad=True")
        return L.AvgPool2D(_pair(module.kernel_size), _pair(module.stride), _pair(module.padding))
    if isinstance(module, nn.Flatten):
        if module.start_dim != 1 or module.end_dim != -1:
            raise _unsupported(module, where, "only Flatten(start_dim=1, end_dim=-1)")
        return L.Flatten()
    if isinstance(module, nn.Unflatten) and module.dim == 1:
        return L.Reshape(tuple(module.unflattened_size))
    if isinstance(module, nn.Upsample) and module.mode == "nearest" and module.size is None:
        scale = module.scale_factor
        scale = scale[0] if isinstance(scale, tuple) and len(set(scale)) == 1 else scale
        if float(scale).is_integer():
            return L.UpSampling2D(int(scale))
    table = {nn.ReLU: lambda m: L.ReLU(), nn.Sigmoid: lambda m: L.Sigmoid(), nn.Tanh: lambda m: L.Tanh(),
             nn.LeakyReLU: lambda m: L.LeakyReLU(m.negative_slope), nn.ELU: lambda m: L.ELU(m.alpha),
             nn.Dropout2d: lambda m: L.SpatialDropout2D(m.p), nn.Dropout: lambda m: L.Dropout(m.p)}
    if isinstance(module, nn.Softmax) and module.dim is not None:
        return L.Softmax(axis=module.dim)
    if type(module) in table:
        return table[type(module)](module)
    raise _unsupported(module, where)


def _pair(value):
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _load_torch_state(layer, module, torch):
    """Copy a torch module's parameters and buffers into a built minicnn layer (same names)."""
    state = {key: value.detach().cpu().numpy() for key, value in module.state_dict().items()
             if not key.endswith("num_batches_tracked")}
    if state:
        dtype = next(iter(state.values())).dtype
        if dtype in (np.float32, np.float64) and dtype != layer.dtype:
            layer.astype(dtype)
        layer.load_state_dict(state)
    return layer
