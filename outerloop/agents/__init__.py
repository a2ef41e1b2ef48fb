"""The outer loop's agents: the planner, memory agent, tool agent, evaluator, the LangGraph
wiring, the loop and the agent SDK. The public names are exported (lazily) from :mod:`outerloop`."""
