import StableVerbs
print("stableverbs")
