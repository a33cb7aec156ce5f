"""Tasks: prompts (system, images, reasoning suffix, options) and targets (bare answer vs reasoning + box)."""

import pytest
from PIL import Image

from chexone.data.sample import Sample, SampleError
from chexone.tasks.base import PAPER_REASONING_SUFFIX, PromptStyle
from chexone.tasks.builtin import BUILTIN_TASKS


def img():
    return Image.new("L", (28, 28))


def mc(**kw):
    base = dict(id="s1", task="close_vqa", question="Is there an effusion?", answer="B", options=["Yes", "No"],
                images=[img()])
    base.update(kw)
    return Sample(**base)


def test_every_builtin_registered_name_matches_class():
    from chexone.builtin_plugins import BUILTIN_TASKS as LAZY

    assert set(LAZY) == set(BUILTIN_TASKS)


def test_multiple_choice_prompt_and_targets():
    task = BUILTIN_TASKS["close_vqa"]()
    s = mc()
    msgs = task.messages(s, reasoning=False)
    assert msgs[0] == {"role": "system", "content": [{"type": "text", "text": "You are a helpful assistant."}]}
    user = msgs[1]["content"]
    assert user[0] == {"type": "image"}
    assert user[1]["text"] == "Is there an effusion?\n(A) Yes\n(B) No"
    assert task.target(s, reasoning=False) == "(B) No"
    # reasoning mode appends the paper's suffix and boxes the answer
    r = task.messages(s, reasoning=True)[1]["content"][1]["text"]
    assert r.endswith(" " + PAPER_REASONING_SUFFIX)
    assert PAPER_REASONING_SUFFIX == "Please reason step by step and put your final answer within \\boxed{}."
    assert task.target(s, reasoning=True) == "\\boxed{(B) No}"
    s2 = mc(reasoning="1. Fluid at the base.")
    assert task.target(s2, reasoning=True) == "1. Fluid at the base.\n\n**Final Answer:** \\boxed{(B) No}"
    s3 = mc(reasoning="**Thinking Process:** x **Final Answer:** \\boxed{B}")
    assert task.target(s3, reasoning=True) == s3.reasoning


def test_custom_style_suffix_and_no_system():
    task = BUILTIN_TASKS["close_vqa"]()
    style = PromptStyle(system_prompt="", reasoning_suffix="Think.")
    msgs = task.messages(mc(), reasoning=True, style=style)
    assert msgs[0]["role"] == "user"
    assert msgs[0]["content"][-1]["text"].endswith("(B) No Think.")


def test_mc_correctness_and_well_formed():
    task = BUILTIN_TASKS["close_vqa"]()
    s = mc()
    assert task.is_correct("(B) No", s, reasoning=False)
    assert not task.is_correct("(A) Yes", s, reasoning=False)
    assert task.is_correct("because... \\boxed{B}", s, reasoning=True)
    assert not task.is_correct("because... B", s, reasoning=True)  # no box in reasoning mode
    assert task.is_well_formed("x \\boxed{(B) No}", s, reasoning=True)
    assert not task.is_well_formed("\\boxed{A} \\boxed{B}", s, reasoning=True)  # two boxes
    assert not task.is_well_formed("(C) maybe", s, reasoning=False)  # letter outside the options


def test_mc_without_options_is_a_named_error():
    with pytest.raises(SampleError, match="s1"):
        BUILTIN_TASKS["close_vqa"]().messages(mc(options=[]), reasoning=False)


def test_report_indication_and_grounding_parse():
    rep = BUILTIN_TASKS["findings_generation"]()
    s = Sample(id="r", task="findings_generation", question="Write the findings.", answer="Lungs clear.",
               meta={"indication": "cough"})
    assert rep.question_text(s) == "Indication: cough\nWrite the findings."
    g = BUILTIN_TASKS["phrase_grounding"]()
    ans = "<|ref|>nodule<|/ref|><|box|>(10,20),(30,40)<|/box|>"
    gs = Sample(id="g", task="phrase_grounding", question="Locate the nodule.", answer=ans)
    assert g.is_correct(ans, gs, reasoning=False)
    assert g.is_well_formed("No nodule detected.", gs, reasoning=False)
    assert not g.is_well_formed("somewhere left", gs, reasoning=False)


def test_progression_has_two_images_first():
    t = BUILTIN_TASKS["progression_generation"]()
    s = Sample(id="p", task="progression_generation", question="Compare.", answer="Worse.", images=[img(), img()])
    content = t.messages(s, reasoning=False)[1]["content"]
    assert [c["type"] for c in content] == ["image", "image", "text"]


def test_sample_json_roundtrip_and_errors():
    s = mc(meta={"boxes": [[1, 2, 3, 4]]})
    rec = s.to_json()
    assert rec["images"] == ["img0.png"]
    back = Sample.from_json(rec, [img()])
    assert back.options == s.options and back.meta == s.meta and len(back.images) == 1
    with pytest.raises(SampleError, match="shard-0.tar/key7: missing field"):
        Sample.from_json({"id": "x"}, [], source="shard-0.tar/key7")
    with pytest.raises(SampleError, match="'answer' must be a string"):
        Sample.from_json({"id": "x", "task": "t", "question": "q", "answer": 3}, [], source="s")
