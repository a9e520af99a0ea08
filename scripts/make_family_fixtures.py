#!/usr/bin/env python3
"""Regenerate tests/fixtures/families/*.npz: HF transformers' logits for the tiny family models.

Not a CI step and not a test dependency: run it by hand when tests/tiny_families.py changes a
config or the seeded weights (tests/python/test_family_reference.py then reports the fixtures as
stale), or to re-check the reference against a newer transformers.

    pip install torch==2.13.0 transformers   # CPU torch; references, not CI deps
    PYTHONPATH=src python3 scripts/make_family_fixtures.py [--out DIR]

Last run with torch 2.13.0+cpu and transformers 5.25.0 (each file records its versions).

For each entry of ``tiny_families.FIXTURES`` it writes the model as an fp32 HF folder with
``tiny_models.make_model(tmp, family, "f32", "hf", tiny_families.USUAL_TIED[family], seed=0,
**overrides)``, loads it with ``AutoModelForCausalLM.from_pretrained(folder, dtype=float32,
attn_implementation="eager")`` (refusing any missing, unexpected or mismatched weight: those
would be randomly initialised), and runs each prompt of ``tiny_families.fixture_tokens(n)`` as a
fresh batch-1 forward (no cache, no attention mask). Each ``<name>.npz`` holds ``tokens_<n>``
(int32), ``logits_<n>`` (float32, (n, vocab)), ``fingerprint`` (``tiny_families.fingerprint`` of
the config and weights), ``versions`` and ``layer_types`` (as transformers resolved them).
Only transformers' outputs are stored; nothing of the NumPy reference.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "families"
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=OUT)
    args = parser.parse_args()

    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    import tiny_families as tf
    import tiny_models as tm

    torch.manual_seed(0)  # nothing random should remain; this only makes a slip reproducible
    versions = f"torch {torch.__version__}, transformers {transformers.__version__}"
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name, (family, overrides, lengths) in tf.FIXTURES.items():
            m = tm.make_model(tmp, family, "f32", "hf", tf.USUAL_TIED[family], 0, **overrides)
            model, info = AutoModelForCausalLM.from_pretrained(
                m.path,
                dtype=torch.float32,
                attn_implementation="eager",
                output_loading_info=True,
            )
            bad = {k: v for k, v in info.items() if v and k != "error_msgs"}
            if bad or info.get("error_msgs"):
                raise SystemExit(f"{name}: weights not loaded as written: {info}")
            model.eval()
            out = {
                "fingerprint": np.array(tf.fingerprint(m.cfg, m.ref_weights)),
                "versions": np.array(versions),
                "layer_types": np.array(json.dumps(getattr(model.config, "layer_types", None))),
            }
            for n in lengths:
                tokens = tf.fixture_tokens(n, m.cfg["vocab_size"])
                with torch.no_grad():
                    logits = model(torch.tensor([tokens]), use_cache=False).logits[0]
                out[f"tokens_{n}"] = np.asarray(tokens, dtype=np.int32)
                out[f"logits_{n}"] = logits.numpy().astype(np.float32)
            path = args.out / f"{name}.npz"
            np.savez_compressed(path, **out)
            print(f"{path.relative_to(ROOT)}: {type(model).__name__}, lengths {lengths}")
    print(versions)


if __name__ == "__main__":
    main()
