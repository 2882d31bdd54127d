"""Optimizers and schedulers, step for step against ``torch.optim``.

A tiny layer holds two parameters; at every step both it and a torch optimizer
over copies of the same tensors get the same (varying) gradients, and the
parameters must agree after each step. Schedulers must produce torch's learning
rate sequence.
"""
import numpy as np
import pytest

from minicnn import backend, optim
from minicnn.layers.base import Layer
from minicnn.optim import SGD, Adam, AdamW, CosineAnnealingLR, RMSprop, StepLR, get_optimizer
from tests.helpers import require_torch


class TwoParams(Layer):
    """A stand-in model: a (3, 4) weight and a (4,) bias, created by ``build``."""

    def build(self, input_shape=(4,)):
        super().build(input_shape)
        rng = np.random.default_rng(0)
        self.add_param("weight", rng.standard_normal((3, 4)))
        self.add_param("bias", rng.standard_normal(4))


def built_model(dtype=np.float64):
    model = TwoParams(dtype=dtype)
    model.build()
    return model


def gradients(step, rng, shapes):
    """Gradients that change size over time (large, then small) so AMSGrad's max matters."""
    scale = 3.0 if step < 4 else 0.2
    return {name: scale * rng.standard_normal(shape) for name, shape in shapes.items()}


def run_both(minicnn_cls, torch_name, kwargs, dtype=np.float64, steps=10):
    """Yield ``(minicnn params, torch params)`` after each of ``steps`` identical steps."""
    torch = require_torch()
    model = built_model(dtype)
    torch_params = {name: torch.nn.Parameter(torch.from_numpy(p.copy())) for name, p in model.params.items()}
    torch_opt = getattr(torch.optim, torch_name)(list(torch_params.values()), foreach=False, **kwargs)
    opt = minicnn_cls(model, **kwargs)
    rng = np.random.default_rng(1)
    shapes = {name: p.shape for name, p in model.params.items()}
    for step in range(steps):
        for name, grad in gradients(step, rng, shapes).items():
            model.grads[name][...] = grad
            torch_params[name].grad = torch.from_numpy(grad.astype(dtype))
        opt.step()
        torch_opt.step()
        yield step, model, opt, {name: p.detach().numpy() for name, p in torch_params.items()}


PARITY_CASES = [
    (SGD, "SGD", dict(lr=0.1)),
    (SGD, "SGD", dict(lr=0.1, momentum=0.9)),
    (SGD, "SGD", dict(lr=0.05, momentum=0.9, nesterov=True)),
    (SGD, "SGD", dict(lr=0.1, momentum=0.5, dampening=0.3, weight_decay=0.01)),
    (SGD, "SGD", dict(lr=0.1, weight_decay=0.1)),
    (SGD, "SGD", dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.05)),
    (Adam, "Adam", dict()),
    (Adam, "Adam", dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1)),
    (Adam, "Adam", dict(lr=0.01, betas=(0.9, 0.6), amsgrad=True)),  # small beta2: v falls
    (Adam, "Adam", dict(lr=0.01, eps=1e-3, amsgrad=True, weight_decay=0.05)),
    (AdamW, "AdamW", dict()),
    (AdamW, "AdamW", dict(lr=0.01, betas=(0.9, 0.6), weight_decay=0.1, amsgrad=True)),
    (RMSprop, "RMSprop", dict()),
    (RMSprop, "RMSprop", dict(lr=0.01, centered=True)),
    (RMSprop, "RMSprop", dict(lr=0.01, momentum=0.9)),
    (RMSprop, "RMSprop", dict(lr=0.005, alpha=0.9, eps=1e-4, centered=True, momentum=0.5, weight_decay=0.1)),
]


def case_id(case):
    cls, _, kwargs = case
    return cls.__name__ + "(" + ",".join(f"{k}={v}" for k, v in kwargs.items()) + ")"


@pytest.mark.parametrize("cls, torch_name, kwargs", PARITY_CASES, ids=[case_id(c) for c in PARITY_CASES])
def test_optimizer_matches_torch_step_for_step_in_float64(cls, torch_name, kwargs):
    start = {name: p.copy() for name, p in built_model().params.items()}
    for step, model, _, torch_params in run_both(cls, torch_name, kwargs):
        for name, param in model.params.items():
            np.testing.assert_allclose(param, torch_params[name], rtol=1e-10, atol=1e-12,
                                       err_msg=f"{name} after step {step + 1}")
    # The run moved the parameters (a no-op step would pass the comparison trivially).
    assert all(np.abs(model.params[name] - start[name]).max() > 1e-4 for name in start)


FLOAT32_CASES = PARITY_CASES[1::3]


@pytest.mark.parametrize("cls, torch_name, kwargs", FLOAT32_CASES, ids=[case_id(c) for c in FLOAT32_CASES])
def test_optimizer_matches_torch_in_float32(cls, torch_name, kwargs):
    for step, model, _, torch_params in run_both(cls, torch_name, kwargs, dtype=np.float32):
        for name, param in model.params.items():
            assert param.dtype == np.float32
            np.testing.assert_allclose(param, torch_params[name], rtol=1e-5, atol=1e-6,
                                       err_msg=f"{name} after step {step + 1}")


def test_amsgrad_path_is_exercised():
    # After the gradients shrink, the running max must differ from the current average
    # (with the parity cases' beta2 = 0.6, v forgets the large early gradients).
    *_, (_, _, opt, _) = run_both(Adam, "Adam", dict(lr=0.01, betas=(0.9, 0.6), amsgrad=True))
    state = opt.state["weight"]
    assert np.all(state["max_exp_avg_sq"] >= state["exp_avg_sq"])
    assert np.any(state["max_exp_avg_sq"] > 1.5 * state["exp_avg_sq"])


def test_sgd_step_by_hand():
    model = built_model()
    w0 = model.params["weight"].copy()
    g = np.full((3, 4), 2.0)
    model.grads["weight"][...] = g
    model.grads["bias"][...] = 0
    opt = SGD(model, lr=0.1, momentum=0.9)
    opt.step()  # b = g
    opt.step()  # b = 0.9 g + g
    np.testing.assert_allclose(model.params["weight"], w0 - 0.1 * g - 0.1 * 1.9 * g, rtol=1e-14)


def test_step_updates_in_place_and_zero_grad():
    model = built_model()
    weight = model.params["weight"]
    before = weight.copy()
    model.grads["weight"][...] = 1.0
    opt = Adam(model, lr=0.1)
    opt.step()
    assert model.params["weight"] is weight and not np.allclose(weight, before)
    opt.zero_grad()
    assert all(np.all(grad == 0) for _, _, grad in model.named_parameters())


def test_optimizer_does_not_modify_the_gradient():
    model = built_model()
    model.grads["weight"][...] = 1.0
    opt = SGD(model, lr=0.1, momentum=0.9, weight_decay=0.1)
    opt.step()
    opt.step()
    assert np.all(model.grads["weight"] == 1.0)


def test_optimizer_created_before_the_model_is_built():
    model = TwoParams()
    opt = SGD(model, lr=0.5)
    opt.step()  # nothing to update yet
    model.build()
    model.grads["bias"][...] = 1.0
    before = model.params["bias"].copy()
    opt.step()
    np.testing.assert_allclose(model.params["bias"], before - 0.5, rtol=1e-6)


def test_state_follows_astype_and_continues():
    # 10 float64 steps, versus 5 float64 steps then astype(float32) and 5 more: same result at float32 precision.
    reference = list(run_both(Adam, "Adam", dict(lr=0.05)))[-1][1].params
    model = built_model()
    opt = Adam(model, lr=0.05)
    rng = np.random.default_rng(1)
    shapes = {name: p.shape for name, p in model.params.items()}
    for step in range(10):
        if step == 5:
            model.astype(np.float32)
        for name, grad in gradients(step, rng, shapes).items():
            model.grads[name][...] = grad
        opt.step()
    assert opt.state["weight"]["exp_avg"].dtype == np.float32
    assert model.params["weight"].dtype == np.float32
    for name in reference:
        np.testing.assert_allclose(model.params[name], reference[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls, kwargs", [(SGD, dict(lr=0.1, momentum=0.9)), (Adam, dict(amsgrad=True)),
                                         (RMSprop, dict(centered=True, momentum=0.5))])
def test_state_dict_round_trip_continues_identically(cls, kwargs):
    rng = np.random.default_rng(2)
    grads = [{name: rng.standard_normal(shape) for name, shape in (("weight", (3, 4)), ("bias", (4,)))}
             for _ in range(8)]
    model_a, model_b = built_model(), built_model()
    opt_a = cls(model_a, **kwargs)
    for g in grads[:4]:
        for name in g:
            model_a.grads[name][...] = g[name]
        opt_a.step()
    saved = opt_a.state_dict()
    assert isinstance(saved["state"]["weight"][next(k for k in saved["state"]["weight"] if k != "step")],
                      np.ndarray)
    model_b.load_state_dict(model_a.state_dict())
    opt_b = cls(model_b, lr=123.0) if cls is SGD else cls(model_b)
    opt_b.load_state_dict(saved)
    assert opt_b.lr == opt_a.lr
    for g in grads[4:]:
        for model, opt in ((model_a, opt_a), (model_b, opt_b)):
            for name in g:
                model.grads[name][...] = g[name]
            opt.step()
    for name in model_a.params:
        np.testing.assert_array_equal(model_a.params[name], model_b.params[name])
    # The saved arrays are copies: stepping did not change them.
    assert saved["state"]["weight"]["step"] == 4


def test_load_state_dict_rejects_a_foreign_state():
    adam_state = Adam(built_model()).state_dict()
    with pytest.raises(ValueError, match="SGD.load_state_dict got the state of a Adam optimizer"):
        SGD(built_model(), lr=0.1).load_state_dict(adam_state)


def test_to_numpy_moves_state_and_keeps_values():
    model = built_model()
    model.grads["weight"][...] = 1.0
    opt = Adam(model).to("numpy")
    opt.step()
    assert opt.to("numpy") is opt
    assert isinstance(opt.state["weight"]["exp_avg"], np.ndarray)


@pytest.mark.parametrize("make, error, match", [
    (lambda m: SGD(m, lr=0.0), ValueError, r"SGD expected a learning rate lr > 0, got 0.0"),
    (lambda m: SGD(m, lr=-1), ValueError, r"lr > 0, got -1"),
    (lambda m: SGD(m, lr="0.1"), TypeError, r"SGD expected a number for lr, got '0.1'"),
    (lambda m: SGD(m, lr=0.1, momentum=-0.5), ValueError, r"momentum >= 0, got -0.5"),
    (lambda m: SGD(m, lr=0.1, nesterov=True), ValueError, r"nesterov=True needs momentum > 0"),
    (lambda m: SGD(m, lr=0.1, momentum=0.9, nesterov=True, dampening=0.1), ValueError, r"dampening = 0"),
    (lambda m: Adam(m, betas=(0.9, 1.0)), ValueError, r"Adam expected betas\[1\] in \[0, 1\), got 1.0"),
    (lambda m: AdamW(m, betas=(-0.1, 0.9)), ValueError, r"AdamW expected betas\[0\] in \[0, 1\)"),
    (lambda m: Adam(m, betas=0.9), ValueError, r"betas as a pair"),
    (lambda m: Adam(m, eps=-1e-8), ValueError, r"eps >= 0"),
    (lambda m: AdamW(m, weight_decay=-0.01), ValueError, r"weight_decay >= 0"),
    (lambda m: RMSprop(m, alpha=1.0), ValueError, r"RMSprop expected alpha in \[0, 1\), got 1.0"),
    (lambda m: RMSprop(m, momentum=-1), ValueError, r"momentum >= 0"),
    (lambda m: Adam(object()), TypeError, r"Adam expected a model with named_parameters\(\)"),
])
def test_bad_settings_raise_clear_errors(make, error, match):
    with pytest.raises(error, match=match):
        make(built_model())


def test_get_optimizer():
    model = built_model()
    opt = get_optimizer("adam", model, lr=0.01, amsgrad=True)
    assert type(opt) is Adam and opt.lr == 0.01 and opt.amsgrad and opt.model is model
    assert type(get_optimizer("SGD", model)) is SGD
    assert type(get_optimizer("adamw", model)) is AdamW and get_optimizer("adamw", model).weight_decay == 0.01
    assert type(get_optimizer("rmsprop", model)) is RMSprop and get_optimizer("rmsprop", model).lr == 0.01
    assert get_optimizer(opt, model) is opt
    with pytest.raises(ValueError, match="'sgd', 'adam', 'adamw', 'rmsprop'"):
        get_optimizer("adagrad", model)
    with pytest.raises(ValueError, match="pass the settings to its constructor"):
        get_optimizer(opt, model, lr=0.1)


def test_torch_defaults():
    model = built_model()
    assert Adam(model).hyperparameters() == dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                                                 amsgrad=False)
    assert AdamW(model).hyperparameters() == dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                                                  amsgrad=False)
    assert RMSprop(model).hyperparameters() == dict(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0,
                                                    momentum=0.0, centered=False)


# ---------------------------------------------------------------------- schedulers
SCHEDULER_CASES = [
    (StepLR, "StepLR", dict(step_size=3)),
    (StepLR, "StepLR", dict(step_size=2, gamma=0.5)),
    (CosineAnnealingLR, "CosineAnnealingLR", dict(T_max=10)),
    (CosineAnnealingLR, "CosineAnnealingLR", dict(T_max=7, eta_min=0.01)),  # run goes past T_max
]


@pytest.mark.parametrize("cls, torch_name, kwargs", SCHEDULER_CASES, ids=[case_id(c) for c in SCHEDULER_CASES])
def test_scheduler_lr_sequence_matches_torch(cls, torch_name, kwargs):
    torch = require_torch()
    opt = SGD(built_model(), lr=0.1)
    scheduler = cls(opt, **kwargs)
    torch_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    torch_scheduler = getattr(torch.optim.lr_scheduler, torch_name)(torch_opt, **kwargs)
    assert scheduler.get_last_lr() == pytest.approx(torch_scheduler.get_last_lr(), rel=1e-12)
    ours, theirs = [], []
    for _ in range(20):
        torch_opt.step()
        torch_scheduler.step()
        scheduler.step()
        ours.append(opt.lr)
        theirs.append(torch_scheduler.get_last_lr()[0])
        assert scheduler.get_last_lr() == [opt.lr]
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-15)
    assert len(set(np.round(ours, 12))) > 2  # the schedule really changed the rate


def test_scheduled_lr_is_used_by_the_next_step():
    model = built_model()
    opt = SGD(model, lr=1.0)
    scheduler = StepLR(opt, step_size=1, gamma=0.5)
    scheduler.step()
    model.grads["bias"][...] = 1.0
    before = model.params["bias"].copy()
    opt.step()
    np.testing.assert_allclose(model.params["bias"], before - 0.5, rtol=1e-14)


@pytest.mark.parametrize("make, error, match", [
    (lambda o: StepLR(o, step_size=0), ValueError, r"StepLR expected a positive integer step_size, got 0"),
    (lambda o: StepLR(o, step_size=2.5), ValueError, r"positive integer step_size, got 2.5"),
    (lambda o: StepLR(o, step_size=2, gamma=0), ValueError, r"gamma > 0"),
    (lambda o: CosineAnnealingLR(o, T_max=0), ValueError, r"positive integer T_max, got 0"),
    (lambda o: CosineAnnealingLR(o, T_max=5, eta_min=-1), ValueError, r"eta_min >= 0"),
    (lambda o: StepLR("adam", step_size=2), TypeError, r"StepLR expected a minicnn Optimizer, got str"),
])
def test_scheduler_bad_settings(make, error, match):
    with pytest.raises(error, match=match):
        make(SGD(built_model(), lr=0.1))


def test_public_names():
    expected = {"SGD", "Adam", "AdamW", "RMSprop", "StepLR", "CosineAnnealingLR", "get_optimizer"}
    assert expected <= set(optim.__all__)


@pytest.mark.gpu
def test_optimizer_state_moves_to_cupy_and_steps_like_numpy():
    pytest.importorskip("cupy")
    if "cupy" not in backend.available():
        pytest.skip("no CUDA GPU")
    results = []
    for device in ("numpy", "cupy"):
        model = built_model()
        opt = Adam(model, lr=0.05, amsgrad=True)
        model.grads["weight"][...] = 1.0
        opt.step()
        model.to(device)
        opt.to(device)
        assert backend.backend_name(opt.state["weight"]["exp_avg"]) == device
        model.grads["weight"][...] = -0.5
        opt.step()
        results.append(backend.to_numpy(model.params["weight"]))
    np.testing.assert_allclose(results[1], results[0], rtol=1e-12)
