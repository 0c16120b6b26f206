"""The Qwen-Agent workarounds in agent/qwen_agent_compat.py, each in a fresh interpreter."""

import subprocess
import sys
import textwrap


def run_fresh(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_model_backends_a_run_does_not_use_are_not_imported() -> None:
    out = run_fresh(
        """
        import sys
        import agent.loop.assistant, agent.backends.local
        print(sorted(m for m in ("openai", "dashscope", "qwen_agent.llm.oai") if m in sys.modules))
        """
    )
    assert out.strip() == "[]"


def test_qwen_agents_own_model_types_still_load_by_name() -> None:
    out = run_fresh(
        """
        import agent, sys, qwen_agent.llm as llm
        cfg = {"model": "m", "model_server": "http://127.0.0.1:9/v1"}  # picks its `oai` type
        print(type(llm.get_chat_model(cfg)).__name__, "openai" in sys.modules)
        """
    )
    assert out.split() == ["TextChatAtOAI", "True"]


def test_a_deferred_backend_is_the_real_one_when_asked_for() -> None:
    out = run_fresh(
        """
        import agent, qwen_agent.llm as llm
        from qwen_agent.llm.oai import TextChatAtOAI
        assert llm.TextChatAtOAI is TextChatAtOAI
        assert isinstance(llm.QwenChatAtDS, type)  # imported on first use, DashScope too
        client = llm.get_chat_model({"model": "m", "model_server": "http://127.0.0.1:9/v1"})
        print(type(client).__name__)
        assert "openvino" in llm.LLM_REGISTRY and "no_such_type" not in llm.LLM_REGISTRY
        try:
            llm.NoSuchBackend
        except AttributeError as exc:
            print(exc)
        """
    )
    assert out.splitlines() == [
        "TextChatAtOAI",
        "module 'qwen_agent.llm' has no attribute 'NoSuchBackend'",
    ]


def test_qwen_agent_is_imported_on_first_use_with_the_workarounds_in_any_thread() -> None:
    """`import agent` leaves Qwen-Agent alone; its first import, even in a worker thread (as
    the resident service does it), quiets its logs, moves its workspace and keeps our Ctrl-C."""
    out = run_fresh(
        """
        import logging, os, signal, sys, threading
        import agent
        print("qwen_agent" in sys.modules)
        errors = []
        def load():
            try:
                import agent.backends.local
            except BaseException as exc:
                errors.append(repr(exc))
        worker = threading.Thread(target=load)
        worker.start()
        worker.join()
        print(errors, logging.getLogger("qwen_agent_logger").level)
        print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)
        print(os.environ["QWEN_AGENT_DEFAULT_WORKSPACE"].endswith("qwen-agent-workspace"))
        """
    )
    assert out.split() == ["False", "[]", "40", "True", "True"]
