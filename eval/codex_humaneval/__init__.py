"""Codex-HumanEval: generation (``run_eval``), sandboxed execution (``execution``) and pass@k scoring
(``evaluate``)."""
