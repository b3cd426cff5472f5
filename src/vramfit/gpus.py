"""The GPU catalog: what each card is sold as, and what the driver says a program can use.

Two capacities per card, because they differ and the difference decides tight fits:

- `memory_bytes`: the datasheet figure. DRAM "GB" are binary (JEDEC JESD100B.01 defines the memory gigabyte
  as 2^30 bytes), so an "80GB" H100 is 80 x 2^30 bytes of HBM3 on the package.
- `usable_bytes`: the total the driver reports, which is what every allocation (the CUDA context included,
  the "device" level of an estimate) is drawn from: `nvidia-smi --query-gpu=memory.total` in MiB for NVIDIA
  (an "80GB" H100 shows 81559 MiB: the driver keeps the rest, ECC and page tables among it), `rocm-smi
  --showmeminfo vram` in bytes for AMD, and Metal's `recommendedMaxWorkingSetSize` for Apple silicon, the share
  of unified memory macOS lets the GPU wire by default (raised with `sysctl iogpu.wired_limit_mb`).

The usable figures are as printed by the tools on real machines, quoted in public logs (cited per entry). Data
center cards are listed with ECC on, as they ship; with ECC off an A40 shows 49140 MiB instead of 46068 MiB.

The step-cost fields (`dense_bf16_flops`, `peer_bytes_per_s`, `host_bytes_per_s`) feed only the ranking in
`vramfit.search.plan`; they never change a memory figure.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from vramfit.errors import InvalidSetting
from vramfit.units import GiB, MiB

# Host links per direction: PCIe x16 carries 15.75 GB/s (gen3), 31.5 GB/s (gen4), 63 GB/s (gen5)
# (PCI-SIG base specifications 3.0/4.0/5.0: 8/16/32 GT/s per lane, 128b/130b encoding).
PCIE3 = 15_750_000_000
PCIE4 = 31_500_000_000
PCIE5 = 63_000_000_000


@dataclass(frozen=True, kw_only=True, slots=True)
class GPU:
    """One accelerator model. Bytes are ints; flops and bandwidths per GPU, per direction."""

    id: str
    name: str
    vendor: str
    architecture: str
    memory_bytes: int
    usable_bytes: int
    aliases: tuple[str, ...] = ()
    unified: bool = False            # Apple silicon: memory shared with the CPU
    dense_bf16_flops: int | None = None   # dense (no sparsity) bf16/fp16 tensor throughput
    peer_bytes_per_s: int = PCIE4    # GPU-to-GPU inside a node: NVLink/Infinity Fabric, else PCIe
    host_bytes_per_s: int = PCIE4    # GPU-to-host (offload traffic)
    source: str = ""                 # datasheet: capacity, flops, links
    usable_source: str = ""          # where the usable figure was read


def _mib(n: int) -> int:
    return n * MiB


_SMI = "nvidia-smi memory.total as printed on the card (public nvidia-smi logs, e.g. "

CATALOG: tuple[GPU, ...] = (
    # Consumer (GeForce). Flops: fp16/bf16 tensor with fp32 accumulate, dense (Ampere GA102 and Ada AD102
    # whitepapers), the rate PyTorch's bf16 matmuls run at on these cards.
    GPU(id="rtx-3060", name="NVIDIA GeForce RTX 3060 12GB", vendor="nvidia", architecture="ampere",
        memory_bytes=12 * GiB, usable_bytes=_mib(12288), aliases=("3060", "rtx3060"),
        source="NVIDIA GeForce RTX 3060 family specifications: 12 GB GDDR6",
        usable_source=_SMI + "'NVIDIA GeForce RTX 3060 ... 12288MiB')"),
    GPU(id="rtx-3070", name="NVIDIA GeForce RTX 3070", vendor="nvidia", architecture="ampere",
        memory_bytes=8 * GiB, usable_bytes=_mib(8192), aliases=("3070", "rtx3070"),
        source="NVIDIA GeForce RTX 3070 family specifications: 8 GB GDDR6",
        usable_source=_SMI + "'NVIDIA GeForce RTX 3070 ... 8192MiB')"),
    GPU(id="rtx-3090", name="NVIDIA GeForce RTX 3090", vendor="nvidia", architecture="ampere",
        memory_bytes=24 * GiB, usable_bytes=_mib(24576), aliases=("3090", "rtx3090"),
        dense_bf16_flops=71 * 10**12,
        source="NVIDIA GeForce RTX 3090 specifications: 24 GB GDDR6X; GA102 whitepaper: 71 TFLOPS fp16 tensor "
               "with fp32 accumulate",
        usable_source=_SMI + "'NVIDIA GeForce RTX 3090 ... 24576MiB')"),
    GPU(id="rtx-3090-ti", name="NVIDIA GeForce RTX 3090 Ti", vendor="nvidia", architecture="ampere",
        memory_bytes=24 * GiB, usable_bytes=_mib(24564), aliases=("3090 ti", "3090ti"),
        source="NVIDIA GeForce RTX 3090 Ti specifications: 24 GB GDDR6X",
        usable_source=_SMI + "'NVIDIA GeForce RTX 3090 Ti ... 24564MiB')"),
    GPU(id="rtx-4090", name="NVIDIA GeForce RTX 4090", vendor="nvidia", architecture="ada",
        memory_bytes=24 * GiB, usable_bytes=_mib(24564), aliases=("4090", "rtx4090"),
        dense_bf16_flops=165 * 10**12,
        source="NVIDIA GeForce RTX 4090 specifications: 24 GB GDDR6X; Ada whitepaper: 165.2 TFLOPS fp16 tensor "
               "with fp32 accumulate",
        usable_source=_SMI + "'NVIDIA GeForce RTX 4090 ... 24564MiB')"),
    GPU(id="rtx-5090", name="NVIDIA GeForce RTX 5090", vendor="nvidia", architecture="blackwell",
        memory_bytes=32 * GiB, usable_bytes=_mib(32607), aliases=("5090", "rtx5090"), host_bytes_per_s=PCIE5,
        peer_bytes_per_s=PCIE5,
        source="NVIDIA GeForce RTX 5090 specifications: 32 GB GDDR7, PCIe 5.0",
        usable_source=_SMI + "'NVIDIA GeForce RTX 5090 ... 32607MiB')"),
    # Workstation.
    GPU(id="rtx-a6000", name="NVIDIA RTX A6000", vendor="nvidia", architecture="ampere",
        memory_bytes=48 * GiB, usable_bytes=_mib(49140), aliases=("a6000",),
        source="NVIDIA RTX A6000 datasheet: 48 GB GDDR6 with ECC",
        usable_source=_SMI + "'NVIDIA RTX A6000 ... 49140MiB', ECC off as shipped for workstations)"),
    GPU(id="rtx-6000-ada", name="NVIDIA RTX 6000 Ada Generation", vendor="nvidia", architecture="ada",
        memory_bytes=48 * GiB, usable_bytes=_mib(49140), aliases=("6000 ada", "rtx 6000 ada generation"),
        source="NVIDIA RTX 6000 Ada datasheet: 48 GB GDDR6 with ECC",
        usable_source=_SMI + "'NVIDIA RTX 6000 Ada Gene... 49140MiB')"),
    # Data center (ECC on).
    GPU(id="t4", name="NVIDIA Tesla T4", vendor="nvidia", architecture="turing",
        memory_bytes=16 * GiB, usable_bytes=_mib(15360), aliases=("tesla t4",), dense_bf16_flops=65 * 10**12,
        host_bytes_per_s=PCIE3, peer_bytes_per_s=PCIE3,
        source="NVIDIA T4 datasheet: 16 GB GDDR6, 65 TFLOPS mixed precision (fp16; Turing has no bf16), PCIe 3.0",
        usable_source=_SMI + "'Tesla T4 ... 15360MiB')"),
    GPU(id="a10", name="NVIDIA A10", vendor="nvidia", architecture="ampere",
        memory_bytes=24 * GiB, usable_bytes=_mib(23028), aliases=(), dense_bf16_flops=125 * 10**12,
        source="NVIDIA A10 datasheet: 24 GB GDDR6, 125 TFLOPS bf16 tensor (250 with sparsity)",
        usable_source=_SMI + "'NVIDIA A10 ... 23028MiB')"),
    GPU(id="a10g", name="NVIDIA A10G", vendor="nvidia", architecture="ampere",
        memory_bytes=24 * GiB, usable_bytes=_mib(23028), aliases=("aws a10g",),
        source="AWS EC2 G5 instance types: NVIDIA A10G with 24 GB",
        usable_source=_SMI + "'NVIDIA A10G ... 23028MiB')"),
    GPU(id="l4", name="NVIDIA L4", vendor="nvidia", architecture="ada",
        memory_bytes=24 * GiB, usable_bytes=_mib(23034), aliases=(), dense_bf16_flops=121 * 10**12,
        source="NVIDIA L4 datasheet: 24 GB GDDR6, 242 TFLOPS bf16 with sparsity (121 dense)",
        usable_source=_SMI + "'NVIDIA L4 ... 23034MiB')"),
    GPU(id="l40s", name="NVIDIA L40S", vendor="nvidia", architecture="ada",
        memory_bytes=48 * GiB, usable_bytes=_mib(46068), aliases=(), dense_bf16_flops=362 * 10**12,
        source="NVIDIA L40S datasheet: 48 GB GDDR6 with ECC, 733 TFLOPS bf16 with sparsity (362 dense)",
        usable_source=_SMI + "'NVIDIA L40S ... 46068MiB')"),
    GPU(id="v100-16gb", name="NVIDIA Tesla V100 16GB", vendor="nvidia", architecture="volta",
        memory_bytes=16 * GiB, usable_bytes=_mib(16160), aliases=("v100-sxm2-16gb", "v100-pcie-16gb"),
        dense_bf16_flops=125 * 10**12, peer_bytes_per_s=150 * 10**9, host_bytes_per_s=PCIE3,
        source="NVIDIA V100 datasheet: 16 GB HBM2, 125 TFLOPS tensor (fp16; Volta has no bf16), NVLink 300 GB/s "
               "bidirectional (SXM2)",
        usable_source=_SMI + "'Tesla V100-SXM2... 16160MiB', the PCIe card shows the same)"),
    GPU(id="v100-32gb", name="NVIDIA Tesla V100 32GB", vendor="nvidia", architecture="volta",
        memory_bytes=32 * GiB, usable_bytes=_mib(32510), aliases=("v100-sxm2-32gb", "v100-pcie-32gb", "v100s"),
        dense_bf16_flops=125 * 10**12, peer_bytes_per_s=150 * 10**9, host_bytes_per_s=PCIE3,
        source="NVIDIA V100 datasheet: 32 GB HBM2, 125 TFLOPS tensor (fp16), NVLink 300 GB/s bidirectional",
        usable_source=_SMI + "'Tesla V100-SXM2... 32510MiB')"),
    GPU(id="a100-40gb", name="NVIDIA A100 40GB", vendor="nvidia", architecture="ampere",
        memory_bytes=40 * GiB, usable_bytes=_mib(40960), aliases=("a100-sxm4-40gb", "a100-pcie-40gb"),
        dense_bf16_flops=312 * 10**12, peer_bytes_per_s=300 * 10**9,
        source="NVIDIA A100 datasheet: 40 GB HBM2, 312 TFLOPS bf16 dense, NVLink 600 GB/s bidirectional (SXM4)",
        usable_source=_SMI + "'NVIDIA A100-SXM4-40GB ... 40960MiB')"),
    GPU(id="a100-80gb", name="NVIDIA A100 80GB", vendor="nvidia", architecture="ampere",
        memory_bytes=80 * GiB, usable_bytes=_mib(81920), aliases=("a100-sxm4-80gb", "a100 80gb pcie"),
        dense_bf16_flops=312 * 10**12, peer_bytes_per_s=300 * 10**9,
        source="NVIDIA A100 datasheet: 80 GB HBM2e, 312 TFLOPS bf16 dense, NVLink 600 GB/s bidirectional (SXM4)",
        usable_source=_SMI + "'NVIDIA A100 80GB PCIe ... 81920MiB'; SXM4-80GB shows the same)"),
    GPU(id="h100-80gb", name="NVIDIA H100 80GB", vendor="nvidia", architecture="hopper",
        memory_bytes=80 * GiB, usable_bytes=_mib(81559), aliases=("h100", "h100-sxm", "h100 80gb hbm3", "h800"),
        dense_bf16_flops=989 * 10**12, peer_bytes_per_s=450 * 10**9, host_bytes_per_s=PCIE5,
        source="NVIDIA H100 datasheet (SXM5): 80 GB HBM3, 1,979 TFLOPS bf16 with sparsity (989 dense), NVLink "
               "900 GB/s bidirectional, PCIe 5.0",
        usable_source=_SMI + "'NVIDIA H100 80GB HBM3 ... 81559MiB')"),
    GPU(id="h100-94gb", name="NVIDIA H100 NVL", vendor="nvidia", architecture="hopper",
        memory_bytes=94 * GiB, usable_bytes=_mib(95830), aliases=("h100-nvl", "h100 nvl"),
        dense_bf16_flops=835 * 10**12, peer_bytes_per_s=300 * 10**9, host_bytes_per_s=PCIE5,
        source="NVIDIA H100 datasheet (NVL): 94 GB HBM3, 1,671 TFLOPS bf16 with sparsity (835 dense), NVLink "
               "bridge 600 GB/s bidirectional",
        usable_source=_SMI + "'NVIDIA H100 NVL ... 95830MiB')"),
    GPU(id="h200", name="NVIDIA H200", vendor="nvidia", architecture="hopper",
        memory_bytes=141 * GiB, usable_bytes=_mib(143771), aliases=("h200-141gb", "h200 sxm"),
        dense_bf16_flops=989 * 10**12, peer_bytes_per_s=450 * 10**9, host_bytes_per_s=PCIE5,
        source="NVIDIA H200 datasheet: 141 GB HBM3e, 989 TFLOPS bf16 dense, NVLink 900 GB/s bidirectional",
        usable_source=_SMI + "'NVIDIA H200 ... 143771MiB')"),
    GPU(id="b200", name="NVIDIA B200", vendor="nvidia", architecture="blackwell",
        memory_bytes=180 * GiB, usable_bytes=_mib(183359), aliases=("b200-180gb", "hgx b200"),
        dense_bf16_flops=2250 * 10**12, peer_bytes_per_s=900 * 10**9, host_bytes_per_s=PCIE5,
        source="NVIDIA DGX/HGX B200 datasheet: 1,440 GB HBM3e per 8 GPUs (180 GB each), 36 PFLOPS fp16/bf16 "
               "per 8 GPUs with sparsity (2.25 dense each), NVLink 1.8 TB/s bidirectional",
        usable_source=_SMI + "'NVIDIA B200 ... 183359MiB')"),
    GPU(id="mi300x", name="AMD Instinct MI300X", vendor="amd", architecture="cdna3",
        memory_bytes=192 * GiB, usable_bytes=205_822_885_888, aliases=("instinct mi300x", "amd mi300x"),
        dense_bf16_flops=1307 * 10**12, peer_bytes_per_s=448 * 10**9, host_bytes_per_s=PCIE5,
        source="AMD Instinct MI300X datasheet: 192 GB HBM3, 1,307.4 TFLOPS bf16 dense, Infinity Fabric 896 GB/s "
               "peak aggregate bidirectional",
        usable_source="rocm-smi --showmeminfo vram 'VRAM Total Memory (B): 205822885888' (public ROCm logs)"),
    # Apple silicon: unified memory, of which Metal's recommendedMaxWorkingSetSize is the GPU's default share.
    GPU(id="apple-16gb", name="Apple silicon Mac, 16 GB unified memory", vendor="apple", architecture="apple",
        memory_bytes=16 * GiB, usable_bytes=int(11.84 * GiB), aliases=("m3 16gb", "mac 16gb"), unified=True,
        source="Apple Mac specifications: 16 GB unified memory",
        usable_source="recommendedMaxWorkingSetSize 11.84 of 16.00 on an M3 16 GB (AlexsJones/llmfit PR #754)"),
    GPU(id="apple-24gb", name="Apple silicon Mac, 24 GB unified memory", vendor="apple", architecture="apple",
        memory_bytes=24 * GiB, usable_bytes=int(17.76 * GiB), aliases=("mac 24gb",), unified=True,
        source="Apple Mac specifications: 24 GB unified memory",
        usable_source="recommendedMaxWorkingSetSize 17.76 GiB on a 24 GB Mac (sgl-project/sglang PR #29949)"),
    GPU(id="apple-128gb", name="Apple silicon Mac, 128 GB unified memory", vendor="apple", architecture="apple",
        memory_bytes=128 * GiB, usable_bytes=int(107.52 * GiB), aliases=("m5 max 128gb", "mac 128gb"),
        unified=True, source="Apple Mac specifications: 128 GB unified memory",
        usable_source="recommendedMaxWorkingSetSize 107.52 GiB stock on an M5 Max 128 GB, macOS 26, about 84% "
                      "of RAM (antirez/ds4 PR #893; osaurus-ai/osaurus PR #1958)"),
)

_BY_ID = {gpu.id: gpu for gpu in CATALOG}
_VENDOR_WORDS = re.compile(r"\b(nvidia|geforce|tesla|amd|instinct|radeon)\b")  # "apple" is part of ids


def normalize(name: str) -> str:
    """'NVIDIA GeForce RTX 4090' -> 'rtx-4090': lower case, vendor words dropped, runs of spaces, dashes and
    underscores made one dash."""
    text = _VENDOR_WORDS.sub(" ", name.lower())
    return "-".join(part for part in re.split(r"[\s_\-]+", text) if part)


def _index() -> dict[str, GPU]:
    index: dict[str, GPU] = {}
    for gpu in CATALOG:
        for key in (gpu.id, gpu.name, *gpu.aliases):
            index.setdefault(normalize(key), gpu)
    return index


_INDEX = _index()


def gpu_ids() -> tuple[str, ...]:
    return tuple(gpu.id for gpu in CATALOG)


def lookup(name: str) -> GPU:
    """The catalog entry for a name, forgiving case, spaces and vendor prefixes ('NVIDIA RTX 4090',
    'H100', 'a100 80gb'); InvalidSetting listing the nearest ids when nothing matches."""
    key = normalize(name)
    for candidate in (key, key.removesuffix("-gpu")):
        if candidate in _INDEX:
            return _INDEX[candidate]
    for suffix in ("gb", "-gb"):
        if (key + suffix) in _INDEX:
            return _INDEX[key + suffix]
    hint = ", ".join(_near(key)) or ", ".join(gpu_ids())
    raise InvalidSetting(f"--gpu: unknown GPU {name!r}; did you mean {hint}? "
                         "Or state the capacity with --gpu-memory, e.g. 24GiB")


def _near(key: str) -> list[str]:
    """Ids the typed key starts (a model sold in several sizes: 'a100' -> a100-40gb, a100-80gb), then the
    closest spellings."""
    sizes = [gpu.id for gpu in CATALOG if gpu.id.startswith(key + "-")]
    close = [_INDEX[n].id for n in difflib.get_close_matches(key, list(_INDEX), n=4, cutoff=0.4)]
    return list(dict.fromkeys(sizes + close))[:5]


def capacity_bytes(gpu: str | None, gpu_memory: int | None) -> int | None:
    """What one GPU offers: --gpu-memory when stated (it wins), else the catalog's usable bytes, else None."""
    if gpu_memory is not None:
        if gpu_memory <= 0:
            raise InvalidSetting(f"--gpu-memory: {gpu_memory} bytes is not a capacity; pass e.g. 24GiB")
        return gpu_memory
    return lookup(gpu).usable_bytes if gpu else None


def custom(usable_bytes: int) -> GPU:
    """A GPU known only by its capacity (--gpu-memory): no datasheet, so no flops or links."""
    return GPU(id="custom", name=f"a GPU with {usable_bytes / GiB:.2f} GiB", vendor="unknown",
               architecture="unknown", memory_bytes=usable_bytes, usable_bytes=usable_bytes,
               usable_source="--gpu-memory")
