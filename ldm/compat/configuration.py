"""diffusers' configuration and output conventions, without diffusers: dict-like configs (``dict(config)``,
``config.items()``, ``config.name``), ``register_to_config``, ``save_config`` / ``load_config`` / ``from_config``, and
output objects that are dicts, tuples (``out[0]``) and attribute bags (``out.sample``) at once.

These follow diffusers 0.42's ConfigMixin and BaseOutput behaviour, including its quirks that user code can observe
(``from_config`` drops the keys of compatible classes silently and warns about other unknown ones; a config records
``_use_default_values``; ``save_config`` adds ``_class_name`` and ``_diffusers_version`` to the config it writes).
"""
from __future__ import annotations

import inspect
import json
import logging
import os
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ldm.io import DIFFUSERS_VERSION
from ldm.files import read_json

logger = logging.getLogger("ldm.compat")


# ----------------------------------------------------------------------------------------------------------------
# The config mapping
# ----------------------------------------------------------------------------------------------------------------


class ConfigDict(OrderedDict):
    """A model's or scheduler's configuration in diffusers' key names: a dict (``dict(config)``, ``config["key"]``,
    ``.items()``) whose keys are also attributes (``config.key``).

    ``plain`` is the configuration object of the plain ldm class the compat class extends (a dataclass or a
    namespace): attributes the plain code reads and diffusers does not have (``config.num_heads``,
    ``config.downsample_factor``, ``config.to_diffusers()``) are found there, and where both have a name the plain
    value is returned to attribute access (the plain model code relies on its own types, e.g. one entry per level),
    while item access and ``dict(config)`` give diffusers' values.
    """

    def __init__(self, values=(), plain=None):
        super().__init__(values)
        object.__setattr__(self, "_plain", plain)

    def __getattr__(self, name):
        plain = self.__dict__.get("_plain")
        if plain is not None and not name.startswith("__") and hasattr(plain, name):
            return getattr(plain, name)
        if name in self:
            return self[name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __setattr__(self, name, value):
        raise AttributeError(f"config attributes are read-only; use register_to_config({name}=...)")

    def __reduce__(self):
        return type(self), (list(self.items()), self.__dict__.get("_plain"))


def _json_value(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return value.as_posix()
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    return value


class ConfigMixin:
    """``config`` (a ConfigDict), ``register_to_config``, ``save_config``, ``load_config`` and ``from_config`` as in
    diffusers. The class sets ``config_name`` (the JSON file name) and ``_diffusers_signature`` (its diffusers
    constructor's keyword arguments and defaults, in order)."""

    config_name: str = "config.json"
    ignore_for_config: list = []
    _deprecated_kwargs: list = []
    has_compatibles = False
    _compatibles: list = []
    _diffusers_signature: dict = {}
    _classes: dict = {}          # every ldm.compat class by name, filled as they are defined (for `compatibles`)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        ConfigMixin._classes[cls.__name__] = cls

    def _register_init(self, passed: dict, plain) -> None:
        """Record the constructor's arguments as diffusers does: every keyword with its value or default, plus
        ``_use_default_values`` (the keys not passed) when there are any."""
        values = {k: passed.get(k, default) for k, default in self._diffusers_signature.items()}
        defaulted = [k for k in self._diffusers_signature if k not in passed]
        if defaulted:
            values["_use_default_values"] = defaulted
        values.update({k: v for k, v in passed.items() if k.startswith("_")})
        self.__dict__["config"] = ConfigDict(values, plain)

    @property
    def _internal_dict(self) -> ConfigDict:
        return self.config

    def register_to_config(self, **kwargs) -> None:
        """Add or replace config entries (informational: the model's structure is already built)."""
        kwargs.pop("kwargs", None)
        self.__dict__["config"] = ConfigDict({**self.config, **kwargs}, self.config.__dict__.get("_plain"))

    def _config_getattr(self, name: str):
        """diffusers' deprecated shortcut ``obj.key`` for ``obj.config.key``: returns it with a FutureWarning."""
        config = self.__dict__.get("config")
        if isinstance(config, ConfigDict) and name in config:
            warnings.warn(f"Accessing config attribute `{name}` directly via '{type(self).__name__}' object "
                          f"attribute is deprecated. Please access '{name}' over '{type(self).__name__}'s config "
                          f"object instead, e.g. 'scheduler.config.{name}'.", FutureWarning, stacklevel=3)
            return config[name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    # ---- files --------------------------------------------------------------------------------------------------

    def to_json_string(self) -> str:
        config = self.config
        # diffusers writes these two into the live config as it saves (its FrozenDict is not actually frozen)
        OrderedDict.__setitem__(config, "_class_name", type(self).__name__)
        OrderedDict.__setitem__(config, "_diffusers_version", DIFFUSERS_VERSION)
        values = {k: _json_value(v) for k, v in config.items() if k not in ("_use_default_values", "_ignore_files")}
        return json.dumps(values, indent=2, sort_keys=True) + "\n"

    def save_config(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs) -> None:
        """Write ``save_directory/<config_name>`` (creating the folder). Pushing to the Hub is not offered."""
        if push_to_hub:
            raise ValueError("push_to_hub=True: ldm.compat does not access the Hugging Face Hub; upload the folder "
                             "with huggingface_hub yourself")
        if os.path.isfile(save_directory):
            raise AssertionError(f"Provided path ({save_directory}) should be a directory, not a file")
        os.makedirs(save_directory, exist_ok=True)
        Path(save_directory, self.config_name).write_text(self.to_json_string(), encoding="utf-8")

    @classmethod
    def load_config(cls, pretrained_model_name_or_path: str | os.PathLike, subfolder: str | None = None,
                    return_unused_kwargs: bool = False, **kwargs):
        """Read ``<path>[/subfolder]/<config_name>`` (or a JSON file given directly) from the local disk."""
        _refuse_hub_options(kwargs)
        path = Path(pretrained_model_name_or_path)
        if subfolder:
            path = path / subfolder
        file = path if path.is_file() else path / cls.config_name
        if not file.is_file():
            raise OSError(f"{path}: no {cls.config_name} found (ldm.compat loads local folders only; download a Hub "
                          f"repository first, e.g. with huggingface_hub.snapshot_download)")
        config = read_json(file)
        return (config, kwargs) if return_unused_kwargs else config

    @classmethod
    def _init_keys(cls) -> set:
        return set(cls._diffusers_signature)

    @classmethod
    def extract_init_dict(cls, config_dict: dict, **kwargs):
        """Split a config mapping as diffusers does: (constructor kwargs, unused kwargs, hidden entries)."""
        used_defaults = config_dict.get("_use_default_values", [])
        config_dict = {k: v for k, v in config_dict.items() if k not in used_defaults and k != "_use_default_values"}
        original = dict(config_dict)
        expected = cls._init_keys() - set(cls.ignore_for_config)
        compatible_keys = set()
        for other in cls._get_compatibles():
            compatible_keys |= other._init_keys()
        config_dict = {k: v for k, v in config_dict.items() if k not in compatible_keys - cls._init_keys()}
        config_dict.pop("_class_name", None)
        config_dict = {k: v for k, v in config_dict.items() if not k.startswith("_") and k != "quantization_config"}
        init_dict = {}
        for key in expected:
            if key in kwargs:
                config_dict.pop(key, None)
                init_dict[key] = kwargs.pop(key)
            elif key in config_dict:
                init_dict[key] = config_dict.pop(key)
        if config_dict:
            logger.warning(f"The config attributes {config_dict} were passed to {cls.__name__}, but are not "
                           f"expected and will be ignored. Please verify your {cls.config_name} configuration file.")
        unused = {**config_dict, **kwargs}
        hidden = {k: v for k, v in original.items() if k not in init_dict}
        return init_dict, unused, hidden

    @classmethod
    def from_config(cls, config: dict | None = None, return_unused_kwargs: bool = False, **kwargs):
        """Build from a config mapping (``other.config``, or a loaded config.json); ``kwargs`` override entries.
        Entries of compatible classes are kept in the new config (as diffusers does), unknown ones warned about."""
        if config is None:
            raise ValueError("Please make sure to provide a config as the first positional argument.")
        if not isinstance(config, dict):
            raise ValueError(f"{cls.__name__}.from_config expects a config mapping; to load a folder use "
                             f"{cls.__name__}.from_pretrained(path)")
        init_dict, unused, hidden = cls.extract_init_dict(config, **kwargs)
        obj = cls(**init_dict)
        if "_class_name" in hidden:
            hidden["_class_name"] = cls.__name__
        obj.register_to_config(**hidden)
        unused = {**unused, **hidden}
        return (obj, unused) if return_unused_kwargs else obj

    @classmethod
    def _get_compatibles(cls) -> list:
        names = dict.fromkeys([cls.__name__, *cls._compatibles])
        return [ConfigMixin._classes[name] for name in names if name in ConfigMixin._classes]

    @property
    def compatibles(self) -> list:
        """The ldm.compat classes whose ``from_config`` accepts this object's config (diffusers' list, restricted
        to the classes ldm offers)."""
        return self._get_compatibles()


def _refuse_hub_options(kwargs: dict) -> None:
    """Hub and accelerate options: accepted at their no-op values, refused by name otherwise."""
    neutral = {"cache_dir": None, "force_download": False, "proxies": None, "local_files_only": None, "token": None,
               "revision": None, "user_agent": None, "resume_download": None, "output_loading_info": False,
               "device_map": None, "max_memory": None, "offload_folder": None, "offload_state_dict": None,
               "use_safetensors": None, "mirror": None, "use_auth_token": None, "disable_mmap": False,
               "quantization_config": None, "from_flax": False, "_commit_hash": None}
    for key in list(kwargs):
        if key in neutral:
            value = kwargs.pop(key)
            if key == "local_files_only" or key == "use_safetensors":
                continue
            if value not in (neutral[key], None, False):
                raise ValueError(f"{key}={value!r} is not offered by ldm.compat (no Hub access, no accelerate "
                                 f"device maps or quantisation); load a local folder")


# ----------------------------------------------------------------------------------------------------------------
# Output objects
# ----------------------------------------------------------------------------------------------------------------


class BaseOutput(OrderedDict):
    """A model output as diffusers returns it: the fields that are not None, as dict entries in field order, as
    attributes (a missing field reads None) and by position (``out[0]``, ``out.to_tuple()``)."""

    _fields: tuple[str, ...] = ()

    def __init__(self, *args, **kwargs):
        values = dict(zip(self._fields, args))
        for key, value in kwargs.items():
            if key not in self._fields:
                raise TypeError(f"{type(self).__name__} has no field {key!r}; fields: {self._fields}")
            values[key] = value
        super().__init__((k, values[k]) for k in self._fields if values.get(k) is not None)

    def __getattr__(self, name):
        if name in self:
            return self[name]
        if name in type(self)._fields:
            return None
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __getitem__(self, key):
        if isinstance(key, str):
            return OrderedDict.__getitem__(self, key)
        return self.to_tuple()[key]

    def __reduce__(self):
        return type(self), (), None, None, iter(self.items())

    def to_tuple(self) -> tuple:
        return tuple(self.values())


def _output(name: str, fields: tuple[str, ...], doc: str) -> type:
    return type(name, (BaseOutput,), {"_fields": fields, "__doc__": doc, "__module__": __name__})


AutoencoderKLOutput = _output("AutoencoderKLOutput", ("latent_dist",),
                              "``latent_dist``: the posterior (ldm.vae.DiagonalGaussian) of AutoencoderKL.encode.")
DecoderOutput = _output("DecoderOutput", ("sample", "commit_loss"),
                        "``sample``: decoded images; ``commit_loss``: the VQ loss (VQModel only).")
VQEncoderOutput = _output("VQEncoderOutput", ("latents",), "``latents``: VQModel.encode's pre-quantization latents.")
UNet2DConditionOutput = _output("UNet2DConditionOutput", ("sample",), "``sample``: the UNet's prediction.")
SchedulerOutput = _output("SchedulerOutput", ("prev_sample",), "``prev_sample``: x at the next timestep.")
DDPMSchedulerOutput = _output("DDPMSchedulerOutput", ("prev_sample", "pred_original_sample"),
                              "``prev_sample`` and the step's x̂_0 estimate ``pred_original_sample``.")
DDIMSchedulerOutput = _output("DDIMSchedulerOutput", ("prev_sample", "pred_original_sample"),
                              DDPMSchedulerOutput.__doc__)
EulerDiscreteSchedulerOutput = _output("EulerDiscreteSchedulerOutput", ("prev_sample", "pred_original_sample"),
                                       DDPMSchedulerOutput.__doc__)
EulerAncestralDiscreteSchedulerOutput = _output("EulerAncestralDiscreteSchedulerOutput",
                                                ("prev_sample", "pred_original_sample"), DDPMSchedulerOutput.__doc__)


def signature_of(params: dict) -> inspect.Signature:
    """An ``__init__`` signature ``(self, name=default, ...)`` for a table of diffusers keyword arguments, so that
    ``inspect.signature`` (which diffusers-style code and ``from_config`` consult) lists diffusers' names."""
    self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return inspect.Signature([self_param] + [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=v)
                                             for k, v in params.items()])
