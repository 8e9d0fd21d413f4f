"""The plugin contract: the pluggy markers and the hooks a plugin may implement.

Kept apart from the registry so a plugin author reads the whole contract in one short file
(as in llm's `hookspecs.py`); plugins import `hookimpl` from `instseg`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import pluggy

if TYPE_CHECKING:
    from instseg.models.specs import ModelSpec, ObjectiveSpec

PROJECT = "instseg"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class HookSpecs:
    """The hooks a plugin may implement. Each receives a `register` callback."""

    @hookspec
    def register_backbones(self, register: Callable[..., None]) -> None:
        """Call `register(name, factory, description="")` for each backbone.

        `factory(in_channels: int = 3, **kwargs) -> Backbone`; it must accept `width`.
        """

    @hookspec
    def register_models(self, register: Callable[["ModelSpec"], None]) -> None:
        """Call `register(ModelSpec(...))` for each model."""


    @hookspec
    def register_objectives(self, register: Callable[["ObjectiveSpec"], None]) -> None:
        """Call `register(ObjectiveSpec(...))` for each instance objective (`instseg train --objective`)."""


HOOK_NAMES = ("register_backbones", "register_models", "register_objectives")
