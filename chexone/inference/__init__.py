"""Using a trained model: answer questions about radiographs (``python -m chexone.infer``) and serve it over an
OpenAI-compatible HTTP API (``python -m chexone.serve``). See docs/inference.md."""

from chexone.inference.engine import Completion, Conversation, InferenceError, InferenceModel
from chexone.inference.questions import Answer, Question, answer_questions

__all__ = ["Answer", "Completion", "Conversation", "InferenceError", "InferenceModel", "Question",
           "answer_questions"]
