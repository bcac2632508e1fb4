"""Cache tiers: LLM (exact and semantic), embeddings, tools, LangGraph nodes."""
