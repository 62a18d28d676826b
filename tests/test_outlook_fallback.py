"""The one-time self-check of the Triton outlook kernel, on CPU with stand-ins for the kernel."""
import warnings

import pytest
import torch

from vitlab.attention import outlook, outlook_triton
from vitlab.attention.outlook import outlook_attention


def _torch_path(v, attn, kernel_size, padding, stride):
    return outlook._FoldFreeOutlook.apply(v, attn, kernel_size, padding, stride)


def _wrong(v, attn, kernel_size, padding, stride):
    return _torch_path(v, attn, kernel_size, padding, stride) * 1.01


def _raises(v, attn, kernel_size, padding, stride):
    raise RuntimeError("compile failed")


@pytest.fixture
def stand_in(monkeypatch):
    """Pretend Triton is usable on CPU and install ``fn`` as its kernel; counts the kernel's calls."""
    calls = []
    outlook.reset_triton_check()
    monkeypatch.setattr(outlook, "_triton_available", lambda v: True)

    def install(fn):
        def counted(*args):
            calls.append(args[0].shape)
            return fn(*args)
        monkeypatch.setattr(outlook_triton, "triton_outlook_attention", counted)
        return calls

    yield install
    outlook.reset_triton_check()


def _inputs(stride=2):
    g = torch.Generator().manual_seed(1)
    n = 64 if stride == 1 else 16
    return torch.randn(2, 8, 8, 8, generator=g), torch.randn(2, 2, n, 9, 9, generator=g).softmax(-1)


def _runtime_warnings(record):
    return [w for w in record if issubclass(w.category, RuntimeWarning)]


def test_wrong_kernel_falls_back_with_one_warning(stand_in):
    calls = stand_in(_wrong)
    v, attn = _inputs()
    expected = outlook_attention(v, attn, 2, implementation="torch")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        out = outlook_attention(v, attn, 2, implementation="auto")
        out2 = outlook_attention(v, attn, 2, implementation="auto")
    found = _runtime_warnings(record)
    assert len(found) == 1, [str(w.message) for w in found]
    assert "max abs difference" in str(found[0].message) and "implementation='torch'" in str(found[0].message)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    torch.testing.assert_close(out2, expected, rtol=0, atol=0)
    assert len(calls) == 1  # only the check ran the stand-in, the calls themselves used PyTorch


def test_raising_kernel_falls_back_with_the_message(stand_in):
    stand_in(_raises)
    v, attn = _inputs()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with torch.no_grad():
            out = outlook_attention(v, attn, 2)
    found = _runtime_warnings(record)
    assert len(found) == 1 and "RuntimeError: compile failed" in str(found[0].message)
    torch.testing.assert_close(out, outlook_attention(v, attn, 2, implementation="torch"), rtol=0, atol=0)


def test_correct_kernel_is_used_without_warning(stand_in):
    calls = stand_in(_torch_path)
    v, attn = _inputs(stride=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():  # the check enables grad itself
            out = outlook_attention(v, attn, 2, stride=1)
        out2 = outlook_attention(v, attn, 2, stride=1)
    checked = len(calls)
    assert checked == 4  # the check (strides 2 and 1), then both calls
    assert outlook._TRITON_CHECK[("cpu", torch.float32)][0]
    torch.testing.assert_close(out, outlook_attention(v, attn, 2, stride=1, implementation="torch"))
    torch.testing.assert_close(out2, out)


def test_explicit_triton_with_wrong_kernel_raises(stand_in):
    stand_in(_wrong)
    v, attn = _inputs()
    for _ in range(2):  # the cached failure raises again
        with pytest.raises(RuntimeError, match="disagrees with the PyTorch path.*max abs difference"):
            outlook_attention(v, attn, 2, implementation="triton")


def test_no_check_while_compiling_and_under_inference_mode(stand_in, monkeypatch):
    calls = stand_in(_torch_path)
    v, attn = _inputs()
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    outlook_attention(v, attn, 2)  # no cached decision: PyTorch path, nothing run or cached
    assert not calls and not outlook._TRITON_CHECK
    monkeypatch.undo()
    monkeypatch.setattr(outlook, "_triton_available", lambda v: True)
    stand_in(_torch_path)
    with torch.inference_mode():
        outlook_attention(v, attn, 2)
    assert outlook._TRITON_CHECK[("cpu", torch.float32)][0]
