"""Triton's interpreter (TRITON_INTERPRET=1: the kernels on CPU tensors, as the tests and the benches' CPU checks
run them), with one fix applied once: Triton 3.6's interpreter turns a scalar (a 1-element array) into a loop
bound with int(array), which NumPy >= 2.4 rejects; .item() does the same for every NumPy."""

import os

_fixed = False


def fix_interpreter() -> None:
    """Call before launching a kernel on CPU tensors; nothing happens unless TRITON_INTERPRET=1."""
    global _fixed
    if _fixed or os.environ.get("TRITON_INTERPRET") != "1":
        return
    from triton.runtime import interpreter

    def _patch_lang_tensor(tensor, scope, _patch=interpreter._patch_lang_tensor):
        _patch(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.item()))

    interpreter._patch_lang_tensor = _patch_lang_tensor
    _fixed = True
