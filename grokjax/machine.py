"""What decides a program's last bits: the machine a number was computed on.

Bit-exact numbers are a promise of ONE machine: the same jax and jaxlib, backend and
device kind and, on the CPU backend, the same processor. XLA's CPU backend compiles
for the host (LLVM's host CPU name and features, capped by ``XLA_FLAGS``'s
``--xla_cpu_max_isa``): an AVX-512 Intel Xeon, an AMD EPYC and the same EPYC capped at
AVX2 pick other vector widths and instructions, so the same jax gives other last bits.

``fingerprint()`` is what a stored number must be compared under (tests/test_golden.py
keeps it beside the golden numbers); ``describe()`` names the machine in words (bench.py
prints it with every row).
"""

from __future__ import annotations

import os
import platform
import re

import jax
import jaxlib

# The /proc/cpuinfo flags that name vector instruction sets LLVM may target.
_ISA = re.compile(r"^(sse\d.*|ssse3|avx.*|fma4?|f16c|amx.*|bmi\d|vnni.*|sha_ni|vaes|gfni)$")


def _cpuinfo() -> dict[str, str]:
  """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
  try:
    text = open("/proc/cpuinfo").read().split("\n\n")[0]
  except OSError:
    return {}
  pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
  return {k.strip(): v.strip() for k, v in pairs}


def max_isa() -> str:
  """``--xla_cpu_max_isa`` of ``XLA_FLAGS`` (upper case), or "" when not capped."""
  found = re.findall(r"--xla_cpu_max_isa=(\S+)", os.environ.get("XLA_FLAGS", ""))
  return found[-1].upper() if found else ""


def cpu() -> dict:
  """The host processor: vendor, family/model, name, cores, its vector ISA flags and
  the cap XLA is given."""
  info = _cpuinfo()
  flags = sorted(f for f in info.get("flags", "").split() if _ISA.match(f))
  return dict(
    vendor=info.get("vendor_id", platform.machine()),
    family=info.get("cpu family", ""),
    model=info.get("model", ""),
    name=info.get("model name", platform.processor() or platform.machine()),
    cores=os.cpu_count() or 0,
    isa=flags,
    max_isa=max_isa(),
  )


def fingerprint() -> dict:
  """What decides the bits of a computation here: jax and jaxlib, the backend, its
  device kind and, on CPU, the processor (vendor, family, model, ISA flags, the XLA
  cap). Two machines with equal fingerprints compute equal bits."""
  device = jax.devices()[0]
  out = dict(
    jax=jax.__version__,
    jaxlib=jaxlib.__version__,
    backend=device.platform,
    device_kind=device.device_kind,
  )
  if device.platform == "cpu":
    c = cpu()
    out.update(cpu="/".join((c["vendor"], c["family"], c["model"])), isa=c["isa"])
    out["max_isa"] = c["max_isa"]
  return out


def differences(a: dict, b: dict) -> list[str]:
  """The fields in which two fingerprints differ, as ``key: a != b`` (ISA flags as the
  sets' differences)."""
  out = []
  for key in sorted(set(a) | set(b)):
    x, y = a.get(key), b.get(key)
    if x == y:
      continue
    if isinstance(x, list) and isinstance(y, list):
      only_a, only_b = sorted(set(x) - set(y)), sorted(set(y) - set(x))
      out.append(f"{key}: only there {only_a}, only here {only_b}")
    else:
      out.append(f"{key}: {x!r} there, {y!r} here")
  return out


def describe() -> str:
  """One line naming the machine: e.g. "cpu: AMD EPYC, 2 cores, AVX-512 (XLA: native)"."""
  device = jax.devices()[0]
  if device.platform != "cpu":
    return f"{device.platform}: {device.device_kind} x {jax.device_count()}"
  c = cpu()
  widest = next(
    (
      name
      for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"))
      if flag in c["isa"]
    ),
    "SSE",
  )
  cap = c["max_isa"] or "native"
  return f"cpu: {c['name']}, {c['cores']} cores, {widest} (XLA: {cap})"
