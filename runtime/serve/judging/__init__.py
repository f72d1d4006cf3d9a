"""Judging: the inspector that turns a frame into a verdict, the camera's live state and NG gallery it keeps,
teaching from feedback, and the explainer that asks the language model why a part is NG."""
