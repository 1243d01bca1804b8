"""`make report`: one self-contained HTML page of what the model gets wrong and which labels look wrong."""
