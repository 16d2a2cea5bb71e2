"""The inference core must never import torch: prove it with torch made unimportable."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from cli_helpers import REPO


def test_tagging_works_with_torch_unimportable(tiny_model, real_images, tmp_path):
    script = textwrap.dedent(
        f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch.") or name in ("timm", "torchvision"):
                    raise ImportError("torch is blocked in this test")
        sys.meta_path.insert(0, Block())
        try:
            import torch
            raise SystemExit("torch still importable")
        except ImportError:
            pass
        from animetagnet.cli import main
        rc = main(["tag", {str(real_images[0])!r}, "--model", {str(tiny_model)!r}, "-f", "json", "-q"])
        assert rc == 0, rc
        import animetagnet.tagger, animetagnet.outputs, animetagnet.formatting, animetagnet.bundle
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "timm", "torchvision"))
        assert not loaded, loaded
        print("NO_TORCH_OK")
        """
    )
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "NO_TORCH_OK" in proc.stdout
    assert '"rating"' in proc.stdout
