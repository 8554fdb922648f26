"""
Differences between the library releases pdl-trl supports, in one place: each gate keyed on an installed version and
commented with the upstream change it follows.
"""

from transformers.utils import is_bitsandbytes_available


def keep_4bit_gradients_exact(model) -> None:
    """
    Turns off bitsandbytes' AVX512-BF16 CPU repacking on every 4-bit layer of `model`.

    bitsandbytes 0.50 (`Linear4bit.forward`, its CPU backend): on a CPU with AVX512-BF16, an eval-mode forward
    without gradients repacks the 4-bit weight for good into a layout whose kernel (`gemv_4bit`) has no backward, so
    later gradients through frozen 4-bit layers come out silently wrong. GPUs never take this path.
    """
    if not is_bitsandbytes_available():
        return
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
