"""`selfctx serve`: an OpenAI-compatible server for compressed inference that reuses compressed memories.

from selfctx.serve import ServeConfig, serve_in_thread
with serve_in_thread(lm, ServeConfig(memory_budget_mb=256)) as server:
    openai.OpenAI(base_url=server.base_url, api_key="-").chat.completions.create(...)
"""

from selfctx.serve.app import create_app, serve_in_thread
from selfctx.serve.config import ServeConfig

__all__ = ["ServeConfig", "create_app", "serve_in_thread"]
