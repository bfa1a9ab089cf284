"""The Realtime simulator: a local server that plays the model and a scripted candidate.

It speaks the GA protocol of research/realtime.md over a WebSocket at ``/v1/realtime``, faithfully
enough that the official ``openai`` SDK can drive it. `engine run` uses it when there is no API key,
end-to-end tests run it at high speed, and `engine test` runs it in-process on virtual time.

The simulated model knows nothing about any particular flow: it follows the session's and each
response's instructions, tools and tool_choice, by the documented rules of `engine.sim.model`
(docs/personas.md); a persona or scenario (`engine.sim.scenario`) supplies the questions, the
candidate's answers and behaviour, and when the model calls the flow's tools.

Modules: scenario (the persona/scenario format), model (the model's decisions), arguments (tool
arguments from JSON Schema), response (the events of one response), vad (turn detection),
clock (simulated time), faults, session (one connection), server (`Simulator`).
"""

from .arguments import generate_arguments
from .faults import Faults
from .model import Call, Decision, Model, Turn
from .response import Response, Speech, Step
from .scenario import (
    Answer,
    Candidate,
    Interviewer,
    Pause,
    Persona,
    PersonaError,
    Scenario,
    ScriptedResponse,
    SpeaksOver,
    ToolCall,
    bundled_personas,
    check_persona,
    load_persona,
    persona_from_data,
    persona_schema,
)
from .server import Simulator, run_forever, simulator
from .session import Connection, SimStats

__all__ = [
    "Simulator", "simulator", "run_forever", "Connection", "SimStats", "Faults",
    "Persona", "Scenario", "Candidate", "Interviewer", "Answer", "Pause", "SpeaksOver", "ToolCall",
    "ScriptedResponse", "PersonaError", "load_persona", "check_persona", "persona_schema", "persona_from_data",
    "bundled_personas", "Model", "Turn", "Decision", "Call", "generate_arguments", "Response", "Speech", "Step",
]  # fmt: skip
