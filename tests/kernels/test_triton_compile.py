"""Every Triton kernel compiles to cubin for real GPU targets, on a machine without a GPU.

The interpreter (``TRITON_INTERPRET=1``, the numerics tests) never runs Triton's code generator, so a
kernel that reads a plain Python global, or uses a construct the compiler rejects, passes there and
fails at its first launch on a cluster. This compiles each kernel with every autotune config of the
``triton`` backend, for each logits dtype the backend accepts, for sm_80 (A100) and sm_90 (H100/H200).
"""

from __future__ import annotations

import importlib.util

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")

TARGETS = {"sm80": 80, "sm90": 90}
LOGITS_DTYPES = ("fp32", "bf16", "fp16")


def _signatures(logits_dtype: str) -> dict[str, dict[str, str]]:
    """Argument types of each kernel as the backend launches it (targets int64, statistics float32)."""
    return {
        "row_logsumexp_kernel": {"logits_ptr": f"*{logits_dtype}", "targets_ptr": "*i64", "lse_ptr": "*fp32",
                                 "logp_ptr": "*fp32", "vocab_size": "i32", "BLOCK_VOCAB": "constexpr"},
        "logits_to_grad_kernel": {"logits_ptr": f"*{logits_dtype}", "targets_ptr": "*i64", "lse_ptr": "*fp32",
                                  "coefficient_ptr": "*fp32", "vocab_size": "i32", "BLOCK_VOCAB": "constexpr"},
    }


@pytest.fixture(scope="module")
def compiler(tmp_path_factory):
    """``compile(kernel, signature, config, capability)``, with Triton's cache in a temporary folder."""
    cache = tmp_path_factory.mktemp("triton-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRITON_CACHE_DIR", str(cache))
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource

        def compile_kernel(kernel, signature, config, capability):
            source = ASTSource(fn=kernel, signature=signature, constexprs=dict(config.kwargs))
            return triton.compile(source, target=GPUTarget("cuda", capability, 32),
                                  options={"num_warps": config.num_warps, "num_stages": config.num_stages})

        yield compile_kernel


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("logits_dtype", LOGITS_DTYPES)
@pytest.mark.parametrize("kernel_name", ["row_logsumexp_kernel", "logits_to_grad_kernel"])
def test_kernel_compiles_to_cubin_for_every_autotune_config(compiler, kernel_name, logits_dtype, target):
    from advdistill_kernels.backends.triton import GPU_CONFIGS
    from advdistill_kernels.triton_kernels import logits_to_grad, row_logsumexp

    kernel = {"row_logsumexp_kernel": row_logsumexp.row_logsumexp_kernel,
              "logits_to_grad_kernel": logits_to_grad.logits_to_grad_kernel}[kernel_name]
    signature = _signatures(logits_dtype)[kernel_name]
    assert list(signature) == kernel.arg_names, "the test's signature no longer matches the kernel's arguments"
    for config in GPU_CONFIGS:
        compiled = compiler(kernel, signature, config, TARGETS[target])
        assert compiled.asm["cubin"], f"{kernel_name} {config} {target}: no cubin"
        assert f".target sm_{TARGETS[target]}" in compiled.asm["ptx"]
