"""The files ldm writes into an exported pipeline folder so that diffusers opens it, locally and without network:

    pipe = diffusers.DiffusionPipeline.from_pretrained(folder, custom_pipeline="pipeline", trust_remote_code=True)
    pipe.vae, pipe.unet, pipe.scheduler     # diffusers' own classes, with the exported weights
    pipe.embedder                           # ldm's UserIDEmbedder (ldm must be importable)

diffusers has no pipeline class for user-ID conditioning, and model_index.json names ldm's. diffusers resolves such a
name through a ``pipeline.py`` beside the index (``custom_pipeline="pipeline"``), and a component of another library
(``["ldm", "UserIDEmbedder"]``) through ``<component>/ldm.py``. Both files only import ldm; they are text that ldm
writes, and ldm itself never imports diffusers. ``trust_remote_code=True`` is diffusers' consent to run a folder's
code: read the two short files first. Sampling stays ldm's: ``ldm.pipeline.Pipeline.from_pretrained(folder)``.
"""
from __future__ import annotations

from pathlib import Path

PIPELINE_FILE = "pipeline.py"

_PIPELINE_SOURCE = '''"""Written by ldm (ldm.compat.pipeline_file) so that diffusers opens this folder without network access:

    pipe = diffusers.DiffusionPipeline.from_pretrained(folder, custom_pipeline="pipeline", trust_remote_code=True)

It holds the components; sampling with the user-ID conditioning is ldm's: ldm.pipeline.Pipeline.from_pretrained.
"""
from importlib import import_module

DiffusionPipeline = import_module("diffusers").DiffusionPipeline       # diffusers, which is loading this file


class {class_name}(DiffusionPipeline):
    """The components of an ldm pipeline folder: {components}."""

    def __init__(self, {components}):
        super().__init__()
        self.register_modules({registrations})
'''

_COMPONENT_SOURCE = '''"""Written by ldm (ldm.compat.pipeline_file): diffusers loads the ["ldm", "{class_name}"] component through this
file. It is ldm's own class; from_pretrained takes the torch_dtype diffusers passes."""
import {module} as _source


class {class_name}(_source.{class_name}):
    @classmethod
    def from_pretrained(cls, path, torch_dtype=None, **kwargs):
        component = _source.{class_name}.from_pretrained(path)
        return component if torch_dtype is None else component.to(torch_dtype)
'''


def write_diffusers_files(folder: str | Path, class_name: str, components: list[str], ldm_components: dict,
                          write) -> None:
    """Write ``folder/pipeline.py`` (class ``class_name`` holding ``components``) and, for each component stored as
    ``["ldm", ClassName]``, ``folder/<component>/ldm.py``. ``ldm_components``: {component: (module, ClassName)};
    ``write(text, path)`` writes a file (ldm.io's atomic writer)."""
    folder = Path(folder)
    write(_PIPELINE_SOURCE.format(class_name=class_name, components=", ".join(components),
                                  registrations=", ".join(f"{name}={name}" for name in components)),
          folder / PIPELINE_FILE)
    for name, (module, component_class) in ldm_components.items():
        write(_COMPONENT_SOURCE.format(module=module, class_name=component_class), folder / name / "ldm.py")
