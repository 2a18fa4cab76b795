"""TACO test-time reranking: the CFN pseudo-count verifier (cfn), RerankPolicy (rerank) and
fitting the verifier on a policy's demonstrations (fit)."""
