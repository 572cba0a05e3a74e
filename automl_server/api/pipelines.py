"""/api/v1/pipelines: the registered training pipelines and their settings.

Read from the registry (``engine.train.registry``), so a pipeline appears here
as soon as it registers; the web form renders its settings from this listing.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from automl_server.api.blueprint import api_blueprint, registry
from automl_server.api.problems import not_found
from automl_server.engine.train.registry import Pipeline, pipelines
from automl_server.jobs.requests import inline_schema


class PipelineOut(BaseModel):
    name: str = Field(description="The value of a job's `pipeline`.")
    title: str
    description: str
    params_key: str = Field(description="A job's settings for this pipeline go under params.<params_key>.")
    settings_schema: dict[str, Any] = Field(description="JSON Schema of the settings (defaults, bounds, "
                                            "descriptions).")
    defaults: dict[str, Any]


class PipelineList(BaseModel):
    pipelines: list[PipelineOut]


def to_out(pipeline: Pipeline) -> PipelineOut:
    return PipelineOut(name=pipeline.name, title=pipeline.title, description=pipeline.description,
                       params_key=pipeline.params_key, settings_schema=inline_schema(pipeline.settings_schema()),
                       defaults=pipeline.parse(None).model_dump(mode="json"))


@registry.operation(api_blueprint, "/pipelines", "GET", scope="read", summary="List the training pipelines and their settings",
                    tag="pipelines", responses={200: PipelineList})
def list_pipelines() -> PipelineList:
    return PipelineList(pipelines=[to_out(p) for p in pipelines().values()])


@registry.operation(api_blueprint, "/pipelines/<name>", "GET", scope="read", summary="One training pipeline and its settings",
                    tag="pipelines", responses={200: PipelineOut}, errors=(404,))
def get_pipeline(name: str) -> PipelineOut:
    known = pipelines()
    if name not in known:
        raise not_found("pipeline", name)
    return to_out(known[name])
