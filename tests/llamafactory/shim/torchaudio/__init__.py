"""Test-environment stand-in for torchaudio (see docs/llamafactory.md).

LLaMA-Factory 0.9.5 imports torchaudio at module level (``llamafactory/data/mm_plugin.py``)
but uses it only to read audio files. On the test venv's torch there is no torchaudio
wheel that loads (2.11 is built for another torch), so the test venv
uninstalls it and puts this folder on ``sys.path`` through a ``.pth`` file. Any use fails
loudly; text and image SFT never touch it.
"""

__version__ = "0.0.0+tokcal.stub"


def __getattr__(name: str):
    raise ImportError(
        f"torchaudio.{name}: torchaudio is a stub in this test environment (tests/llamafactory/shim); "
        "audio data sets need a real torchaudio"
    )
