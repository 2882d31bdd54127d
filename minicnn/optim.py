"""Optimizers and learning-rate schedulers, numerically identical to ``torch.optim``.

An optimizer holds the *model*, not its arrays. Each ``step()`` walks
``model.named_parameters()`` — ``(qualified_name, param, grad)`` triples — and
updates every ``param`` in place from the ``grad`` the last ``backward`` left::

    opt = Adam(model, lr=1e-3)        # may be created before the model is built
    loss.forward(model(x, training=True), y)
    model.backward(loss.backward())
    opt.step()

Per-parameter state (momentum, moment estimates) is keyed by the parameter's
qualified name (``'0.weight'``), so it survives ``model.astype`` and
``model.to``, which replace the arrays; state follows its parameter's dtype and
device automatically, and ``opt.to(device)`` moves it eagerly.

Every update rule below is PyTorch's single-tensor implementation
(``torch/optim/{sgd,adam,rmsprop}.py``, ``_single_tensor_*``) with the same
defaults and the same order of floating-point operations, so the two agree to
rounding step for step. Notation: ``g`` the gradient, ``θ`` the parameter,
``γ`` the learning rate ``lr``, ``λ`` the weight decay, ``t`` the step count.

Schedulers change ``optimizer.lr`` once per epoch (``scheduler.step()``).
"""
from __future__ import annotations

import math
from numbers import Real

import numpy as np

from . import backend

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop",
           "LRScheduler", "StepLR", "CosineAnnealingLR", "get_optimizer", "OPTIMIZERS"]


def _number(owner: str, name: str, value) -> float:
    """``value`` as a float, or a TypeError naming the optimizer and the argument."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, Real):
        raise TypeError(f"{owner} expected a number for {name}, got {value!r}")
    return float(value)


def _at_least_zero(owner: str, name: str, value) -> float:
    value = _number(owner, name, value)
    if not value >= 0:
        raise ValueError(f"{owner} expected {name} >= 0, got {value}")
    return value


def _in_unit_interval(owner: str, name: str, value) -> float:
    """A decay rate in ``[0, 1)``: 1 would freeze an average at its initial zero."""
    value = _number(owner, name, value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{owner} expected {name} in [0, 1), got {value}")
    return value


class Optimizer:
    """Base class: walks the model's parameters, keeps per-name state, saves and moves it.

    Subclasses set ``_hyperparameters`` (constructor argument names restored by
    ``load_state_dict``) and implement ``_init_state(param) -> dict`` and
    ``_update(param, grad, state)``, which changes ``param`` in place.

    Attributes
    ----------
    lr : float
        The learning rate; schedulers and callbacks change it between steps.
    state : dict[str, dict]
        Per-parameter state by qualified name: arrays plus the step count ``'step'``.
    """

    _hyperparameters: tuple = ()

    def __init__(self, model, lr: float):
        owner = type(self).__name__
        if not callable(getattr(model, "named_parameters", None)):
            raise TypeError(f"{owner} expected a model with named_parameters() "
                            f"(a layer or Sequential), got {type(model).__name__}")
        lr = _number(owner, "lr", lr)
        if not lr > 0:
            raise ValueError(f"{owner} expected a learning rate lr > 0, got {lr}")
        self.model = model
        self.lr = lr
        self.state: dict[str, dict] = {}

    def step(self) -> None:
        """Update every parameter in place from the gradient the model currently holds."""
        for name, param, grad in self.model.named_parameters():
            self._update(param, grad, self._state_for(name, param))

    def zero_grad(self) -> None:
        """Set every gradient to 0 (``backward`` overwrites them anyway; this is for hand-made grads)."""
        for _, _, grad in self.model.named_parameters():
            grad[...] = 0

    def _init_state(self, param) -> dict:
        return {}

    def _update(self, param, grad, state: dict) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not implement _update")

    def _state_for(self, name: str, param) -> dict:
        """The state of parameter ``name``, created on first use, on ``param``'s device and dtype."""
        state = self.state.get(name)
        if state is None:
            state = self.state[name] = {"step": 0, **self._init_state(param)}
            return state
        device = backend.backend_name(param)
        for key, value in state.items():
            if not hasattr(value, "shape"):
                continue
            if tuple(value.shape) != tuple(param.shape):
                raise ValueError(
                    f"{type(self).__name__} state '{key}' of parameter '{name}' has shape "
                    f"{tuple(value.shape)} but the parameter has shape {tuple(param.shape)}; "
                    f"was the model rebuilt? Create a new optimizer for it")
            if backend.backend_name(value) != device or value.dtype != param.dtype:
                state[key] = backend.to_device(value, device).astype(param.dtype, copy=False)
        return state

    # ------------------------------------------------------------------ state
    def hyperparameters(self) -> dict:
        """The learning rate and the constructor's other settings."""
        return {"lr": self.lr, **{key: getattr(self, key) for key in self._hyperparameters}}

    def state_dict(self) -> dict:
        """Hyper-parameters and per-parameter state, arrays as NumPy copies."""
        state = {name: {key: backend.to_numpy(value).copy() if hasattr(value, "shape") else value
                        for key, value in entry.items()}
                 for name, entry in self.state.items()}
        return {"type": type(self).__name__, "hyperparameters": self.hyperparameters(), "state": state}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore what ``state_dict`` saved; arrays move to each parameter's device on the next step."""
        owner = type(self).__name__
        if not isinstance(state_dict, dict) or "state" not in state_dict:
            raise ValueError(f"{owner}.load_state_dict expected a dict from state_dict(), got {state_dict!r:.80}")
        saved_type = state_dict.get("type", owner)
        if saved_type != owner:
            raise ValueError(f"{owner}.load_state_dict got the state of a {saved_type} optimizer")
        hyper = dict(state_dict.get("hyperparameters", {}))
        unknown = sorted(set(hyper) - set(self.hyperparameters()))
        if unknown:
            raise ValueError(f"{owner}.load_state_dict got unknown hyper-parameters {unknown}")
        for key, value in hyper.items():
            setattr(self, key, tuple(value) if isinstance(value, list) else value)
        self.state = {name: {key: np.array(value) if hasattr(value, "shape") else value
                             for key, value in entry.items()}
                      for name, entry in state_dict["state"].items()}

    def to(self, device: str) -> "Optimizer":
        """Move the state arrays to ``'numpy'`` or ``'cupy'``; returns self."""
        for entry in self.state.values():
            for key, value in entry.items():
                if hasattr(value, "shape"):
                    entry[key] = backend.to_device(value, device)
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, Nesterov and weight decay.

    As ``torch.optim.SGD``, with momentum buffer ``b`` (``b_1 = g_1``, no dampening
    on the first step)::

        g   <- g + λ θ                              (weight_decay)
        b_t  = μ b_{t-1} + (1 - τ) g                (momentum μ, dampening τ)
        g   <- g + μ b_t   if nesterov  else  b_t
        θ   <- θ - γ g

    Note that PyTorch's momentum multiplies the *velocity* rather than the step,
    so ``lr`` scales the whole update (the other common form puts ``γ`` inside ``b``).
    """

    _hyperparameters = ("momentum", "dampening", "weight_decay", "nesterov")

    def __init__(self, model, lr: float = 1e-3, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0, dampening: float = 0.0):
        super().__init__(model, lr)
        self.momentum = _at_least_zero("SGD", "momentum", momentum)
        self.weight_decay = _at_least_zero("SGD", "weight_decay", weight_decay)
        self.dampening = _number("SGD", "dampening", dampening)
        self.nesterov = bool(nesterov)
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError(f"SGD with nesterov=True needs momentum > 0 and dampening = 0, "
                             f"got momentum={self.momentum}, dampening={self.dampening}")

    def _update(self, param, grad, state):
        state["step"] += 1
        if self.weight_decay != 0:
            grad = grad + self.weight_decay * param
        if self.momentum != 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = grad.copy()  # a copy: grad belongs to the layer
            else:
                buf *= self.momentum
                buf += (1 - self.dampening) * grad
            grad = grad + self.momentum * buf if self.nesterov else buf
        param -= self.lr * grad


class Adam(Optimizer):
    """Adam (Kingma & Ba, 2015), with optional L2 weight decay and AMSGrad.

    As ``torch.optim.Adam``, moments ``m_0 = v_0 = 0``::

        g    <- g + λ θ                                   (weight_decay: L2 in the gradient)
        m_t   = m_{t-1} + (1 - β1) (g - m_{t-1})          (= β1 m + (1 - β1) g)
        v_t   = β2 v_{t-1} + (1 - β2) g^2
        v̂_t   = max(v̂_{t-1}, v_t)  if amsgrad  else  v_t
        θ    <- θ - γ / (1 - β1^t) · m_t / (sqrt(v̂_t) / sqrt(1 - β2^t) + ε)

    The bias corrections ``1 - β^t`` undo the pull towards the zero initial
    moments in the first steps; ``ε`` is added after the correction, as torch.
    """

    _hyperparameters = ("betas", "eps", "weight_decay", "amsgrad")
    _decoupled_weight_decay = False

    def __init__(self, model, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False):
        super().__init__(model, lr)
        owner = type(self).__name__
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"{owner} expected betas as a pair (beta1, beta2), got {betas!r}")
        self.betas = (_in_unit_interval(owner, "betas[0]", betas[0]),
                      _in_unit_interval(owner, "betas[1]", betas[1]))
        self.eps = _at_least_zero(owner, "eps", eps)
        self.weight_decay = _at_least_zero(owner, "weight_decay", weight_decay)
        self.amsgrad = bool(amsgrad)

    def _init_state(self, param):
        xp = backend.get_array_module(param)
        state = {"exp_avg": xp.zeros_like(param), "exp_avg_sq": xp.zeros_like(param)}
        if self.amsgrad:
            state["max_exp_avg_sq"] = xp.zeros_like(param)
        return state

    def _update(self, param, grad, state):
        xp = backend.get_array_module(param)
        beta1, beta2 = self.betas
        state["step"] += 1
        step = state["step"]
        if self.weight_decay != 0:
            if self._decoupled_weight_decay:
                param *= 1 - self.lr * self.weight_decay
            else:
                grad = grad + self.weight_decay * param
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg += (1 - beta1) * (grad - exp_avg)  # torch's lerp_, same rounding
        exp_avg_sq *= beta2
        exp_avg_sq += (1 - beta2) * grad * grad
        step_size = self.lr / (1 - beta1 ** step)
        bias_correction2_sqrt = (1 - beta2 ** step) ** 0.5
        if self.amsgrad:
            xp.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])
            second_moment = state["max_exp_avg_sq"]
        else:
            second_moment = exp_avg_sq
        denom = xp.sqrt(second_moment) / bias_correction2_sqrt + self.eps
        param -= step_size * exp_avg / denom


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter, 2019).

    As ``torch.optim.AdamW``: the decay shrinks the weights directly and never
    enters the moment estimates, then the Adam step (with ``λ = 0``) follows::

        θ <- θ (1 - γ λ)
        θ <- Adam step of θ with gradient g

    With Adam's L2 form, ``λ θ`` is divided by ``sqrt(v̂)`` like the gradient, so
    weights with large gradients are barely decayed; here every weight decays
    at the same rate ``γ λ``. Default ``λ = 0.01``.
    """

    _decoupled_weight_decay = True

    def __init__(self, model, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False):
        super().__init__(model, lr, betas, eps, weight_decay, amsgrad)


class RMSprop(Optimizer):
    """RMSprop (Hinton, 2012), with optional centring, momentum and weight decay.

    As ``torch.optim.RMSprop``, averages ``s_0 = a_0 = b_0 = 0``::

        g   <- g + λ θ                              (weight_decay)
        s_t  = α s_{t-1} + (1 - α) g^2
        a_t  = a_{t-1} + (1 - α) (g - a_{t-1})      (centered only: running mean of g)
        d    = sqrt(s_t - a_t^2) + ε  if centered  else  sqrt(s_t) + ε
        b_t  = μ b_{t-1} + g / d;   θ <- θ - γ b_t  (momentum μ > 0)
        θ   <- θ - γ g / d                          (momentum 0)

    ``centered`` divides by an estimate of the gradient's standard deviation
    instead of its root mean square. Note ``ε`` is added outside the square root
    (Keras adds it inside), and the default ``lr`` is 1e-2, as torch.
    """

    _hyperparameters = ("alpha", "eps", "weight_decay", "momentum", "centered")

    def __init__(self, model, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False):
        super().__init__(model, lr)
        self.alpha = _in_unit_interval("RMSprop", "alpha", alpha)
        self.eps = _at_least_zero("RMSprop", "eps", eps)
        self.weight_decay = _at_least_zero("RMSprop", "weight_decay", weight_decay)
        self.momentum = _at_least_zero("RMSprop", "momentum", momentum)
        self.centered = bool(centered)

    def _init_state(self, param):
        xp = backend.get_array_module(param)
        state = {"square_avg": xp.zeros_like(param)}
        if self.momentum > 0:
            state["momentum_buffer"] = xp.zeros_like(param)
        if self.centered:
            state["grad_avg"] = xp.zeros_like(param)
        return state

    def _update(self, param, grad, state):
        xp = backend.get_array_module(param)
        state["step"] += 1
        if self.weight_decay != 0:
            grad = grad + self.weight_decay * param
        square_avg = state["square_avg"]
        square_avg *= self.alpha
        square_avg += (1 - self.alpha) * grad * grad
        if self.centered:
            grad_avg = state["grad_avg"]
            grad_avg += (1 - self.alpha) * (grad - grad_avg)
            avg = xp.sqrt(square_avg - grad_avg * grad_avg)
        else:
            avg = xp.sqrt(square_avg)
        avg += self.eps
        if self.momentum > 0:
            buf = state["momentum_buffer"]
            buf *= self.momentum
            buf += grad / avg
            param -= self.lr * buf
        else:
            param -= self.lr * grad / avg


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop}


def get_optimizer(name_or_optimizer, model, **kwargs) -> Optimizer:
    """An optimizer for ``model`` from its name (``'sgd'``, ``'adam'``, ``'adamw'``, ``'rmsprop'``).

    ``kwargs`` go to the constructor (``get_optimizer('sgd', model, lr=0.1, momentum=0.9)``);
    an ``Optimizer`` instance is returned as it is. ``'sgd'`` without ``lr`` uses 0.01,
    the Keras default (``SGD(model)`` itself uses torch's 1e-3).
    """
    if isinstance(name_or_optimizer, Optimizer):
        if kwargs:
            raise ValueError(f"get_optimizer got an optimizer instance and settings {sorted(kwargs)}; "
                             f"pass the settings to its constructor instead")
        return name_or_optimizer
    if not isinstance(name_or_optimizer, str):
        raise TypeError(f"get_optimizer expected an optimizer name or an Optimizer, "
                        f"got {type(name_or_optimizer).__name__}")
    key = name_or_optimizer.lower()
    if key not in OPTIMIZERS:
        known = ", ".join(repr(k) for k in OPTIMIZERS)
        raise ValueError(f"unknown optimizer {name_or_optimizer!r}; expected one of {known} "
                         f"or an Optimizer instance")
    if key == "sgd":
        kwargs.setdefault("lr", 0.01)
    return OPTIMIZERS[key](model, **kwargs)


# ---------------------------------------------------------------------- schedulers
class LRScheduler:
    """Base class: sets ``optimizer.lr`` from the epoch count on each ``step()``.

    Call ``step()`` once at the end of every epoch. ``base_lr`` is the
    optimizer's learning rate when the scheduler is created; subclasses give the
    closed form ``get_lr()`` for epoch ``last_epoch``.
    """

    def __init__(self, optimizer):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(self).__name__} expected a minicnn Optimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self.base_lr = float(optimizer.lr)
        self.last_epoch = 0
        self._last_lr = [self.base_lr]

    def get_lr(self) -> float:
        raise NotImplementedError(f"{type(self).__name__} does not implement get_lr")

    def step(self) -> None:
        """Advance one epoch and set the optimizer's learning rate."""
        self.last_epoch += 1
        self.optimizer.lr = self.get_lr()
        self._last_lr = [self.optimizer.lr]

    def get_last_lr(self) -> list[float]:
        """The learning rate set by the last ``step()``, as a one-element list (torch's form)."""
        return list(self._last_lr)

    def state_dict(self) -> dict:
        return {"base_lr": self.base_lr, "last_epoch": self.last_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.base_lr = float(state["base_lr"])
        self.last_epoch = int(state["last_epoch"])
        self._last_lr = [self.get_lr()] if self.last_epoch else [self.base_lr]


class StepLR(LRScheduler):
    """Decay by ``gamma`` every ``step_size`` epochs: ``lr_t = base_lr · gamma^floor(t / step_size)``."""

    def __init__(self, optimizer, step_size: int, gamma: float = 0.1):
        super().__init__(optimizer)
        if isinstance(step_size, bool) or not isinstance(step_size, (int, np.integer)) or step_size <= 0:
            raise ValueError(f"StepLR expected a positive integer step_size, got {step_size!r}")
        gamma = _number("StepLR", "gamma", gamma)
        if not gamma > 0:
            raise ValueError(f"StepLR expected gamma > 0, got {gamma}")
        self.step_size, self.gamma = int(step_size), gamma

    def get_lr(self) -> float:
        return self.base_lr * self.gamma ** (self.last_epoch // self.step_size)


class CosineAnnealingLR(LRScheduler):
    """Cosine annealing from ``base_lr`` down to ``eta_min`` over ``T_max`` epochs (SGDR without restarts).

    ``lr_t = eta_min + (base_lr - eta_min) (1 + cos(pi t / T_max)) / 2``; past
    ``T_max`` the cosine climbs back up, as torch's does.
    """

    def __init__(self, optimizer, T_max: int, eta_min: float = 0.0):  # noqa: N803 (torch's name)
        super().__init__(optimizer)
        if isinstance(T_max, bool) or not isinstance(T_max, (int, np.integer)) or T_max <= 0:
            raise ValueError(f"CosineAnnealingLR expected a positive integer T_max, got {T_max!r}")
        self.T_max = int(T_max)
        self.eta_min = _at_least_zero("CosineAnnealingLR", "eta_min", eta_min)

    def get_lr(self) -> float:
        cosine = (1 + math.cos(math.pi * self.last_epoch / self.T_max)) / 2
        return self.eta_min + (self.base_lr - self.eta_min) * cosine
