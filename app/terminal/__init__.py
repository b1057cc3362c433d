"""What the terminal commands print: the spend report (``llmtap report``), the
recommender's table (``llmtap recommend``) and the shadow evaluation's progress and summary
(``llmtap evaluate``). Each renders results the analyses and the collector compute."""
