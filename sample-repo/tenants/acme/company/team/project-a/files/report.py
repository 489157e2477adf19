from common import greet  # scripts/common.py, inherited from namespace `company`

print(greet("report"))
