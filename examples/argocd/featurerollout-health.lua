-- Argo CD health check for sluice.dev FeatureRollout.
--   Healthy      Promoted: the candidate is the default for everybody
--   Progressing  Pending, Progressing, Paused, WaitingForApproval, or a spec change the
--                controller has not seen yet
--   Degraded     RolledBack (everybody is back on the baseline) or Failed (invalid spec)
-- The message is the rollout's own status.message, with the phase, stage and exposure
-- (status.exposure, e.g. "5% of audience"; status.weight from older controllers).
local hs = {}

local function describe(status)
  local parts = {}
  if status.phase ~= nil then
    table.insert(parts, status.phase)
  end
  if status.stageName ~= nil then
    table.insert(parts, "stage " .. status.stageName)
  end
  if status.exposure ~= nil then
    table.insert(parts, "exposure " .. status.exposure)
  elseif status.weight ~= nil then
    table.insert(parts, "weight " .. status.weight)
  end
  local text = table.concat(parts, ", ")
  if status.message ~= nil and status.message ~= "" then
    if text ~= "" then
      text = text .. ": "
    end
    text = text .. status.message
  end
  return text
end

local status = obj.status
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Sluice controller to pick the rollout up"
  return hs
end

local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and status.observedGeneration ~= nil
    and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the Sluice controller to see generation " .. generation
  return hs
end

local phase = status.phase
if phase == "Promoted" then
  hs.status = "Healthy"
elseif phase == "Pending" or phase == "Progressing" or phase == "Paused"
    or phase == "WaitingForApproval" then
  hs.status = "Progressing"
elseif phase == "RolledBack" or phase == "Failed" then
  hs.status = "Degraded"
else
  hs.status = "Unknown"
end
hs.message = describe(status)
return hs
