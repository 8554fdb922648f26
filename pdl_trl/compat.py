"""
Differences between the library releases pdl-trl supports, in one place: each gate keyed on an installed version and
commented with the upstream change it follows.
"""

import logging

from transformers.utils import is_bitsandbytes_available


class _DropRecords(logging.Filter):
    def __init__(self, start: str):
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.start)


def quiet_bitsandbytes_kernel_lookup() -> None:
    """
    Drops the two log lines bitsandbytes 0.50 prints at import on CPUs with AVX512-BF16 when its optional Hub kernel
    (`kernels-community/quantization-bitsandbytes`, a faster 4-bit inference matmul) cannot be fetched: offline, or
    without the Hub, every command printed them, once or twice. The kernel speeds up only the repacked inference path
    that `keep_4bit_gradients_exact` turns off for training, so losing it changes nothing pdl-trl trains or reports.
    """
    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_DropRecords("Failed to load CPU gemm_4bit_forward"))
    logging.getLogger("kernels._internals.hf_hub").addFilter(
        _DropRecords("Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes'")
    )


quiet_bitsandbytes_kernel_lookup()


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
