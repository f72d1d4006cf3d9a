"""The prompts room: the agent that writes and explains the detector's prompts.

articulate (language model or evidence) -> refine -> false-alarm filter -> a
prompt bank the detector reads; and short explanations of NG frames.
`python -m runtime.prompts` builds a category's bank.
"""
